//! Custom dfdx tape ops: each computes its forward on raw `f32` slices and registers its own
//! backward closure on the tape.
//!
//! dfdx 0.13 on stable has no convolution or pooling, and its public API gives no borrowed view of
//! a tensor's storage, so every op copies its input once into a reused buffer ([`BufferPool`]),
//! computes into a pooled buffer and hands dfdx the result. In backward the output gradient is
//! moved out of dfdx's [`Gradients`](dfdx::tensor::Gradients) (no copy), used, and put back; the
//! input and parameter gradients are accumulated into dfdx's buffers, so an op composes with any
//! other op on the tape.
//!
//! Every op is generic over the tape: with [`NoneTape`](dfdx::tensor::NoneTape) (evaluation) it
//! records nothing and saves nothing.

pub mod conv;
pub mod conv3x3_s2;
pub mod conv_strided;
mod lanes;
pub mod norm;
pub mod pool;
pub mod residual;
pub mod shares;

use std::sync::{Arc, Mutex};

use rayon::prelude::*;

use dfdx::{
    shapes::{HasShape, Shape},
    tensor::{Cpu, CpuError, Tensor, TensorFromVec, ZerosTensor},
};

/// A 4-d NCHW tensor shape with runtime dimensions.
pub type Shape4 = (usize, usize, usize, usize);
/// A flat parameter vector.
pub type Shape1 = (usize,);

/// Reusable `Vec` buffers shared by the ops of a model and their backward closures.
///
/// [`BufferPool::take`] returns a [`Pooled`] buffer of the requested length (contents
/// unspecified: callers overwrite it); dropping a [`Pooled`] returns its allocation to the pool,
/// so after the first training step no large buffer is allocated again. A free buffer keeps its
/// full length, so a take of fewer elements than it once held fills nothing. The pool is behind
/// a mutex so backward closures (`'static`) can own buffers.
#[derive(Clone, Debug)]
pub struct BufferPool<T> {
    free: Arc<Mutex<Vec<Vec<T>>>>,
}

impl<T> Default for BufferPool<T> {
    fn default() -> Self {
        Self {
            free: Arc::new(Mutex::new(Vec::new())),
        }
    }
}

impl<T: Copy + Default> BufferPool<T> {
    /// A buffer of `len` elements: the shortest free buffer that is long enough, else the longest
    /// one grown (rather than keep an ever larger set), else a new one.
    pub fn take(&self, len: usize) -> Pooled<T> {
        let mut free = self.free.lock().unwrap_or_else(|e| e.into_inner());
        let best = free
            .iter()
            .enumerate()
            .filter(|(_, v)| v.len() >= len)
            .min_by_key(|(_, v)| v.len())
            .or_else(|| free.iter().enumerate().max_by_key(|(_, v)| v.len()))
            .map(|(i, _)| i);
        let mut buf = best.map(|i| free.swap_remove(i)).unwrap_or_default();
        drop(free);
        if buf.len() < len {
            buf.resize(len, T::default());
        }
        Pooled {
            buf,
            len,
            pool: self.clone(),
        }
    }

    /// A buffer of `len` zeros.
    pub fn take_zeroed(&self, len: usize) -> Pooled<T> {
        let mut b = self.take(len);
        b.fill(T::default());
        b
    }
}

/// A buffer on loan from a [`BufferPool`]; derefs to its first `len` elements and returns
/// itself on drop.
#[derive(Debug)]
pub struct Pooled<T> {
    buf: Vec<T>,
    len: usize,
    pool: BufferPool<T>,
}

impl<T> std::ops::Deref for Pooled<T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        &self.buf[..self.len]
    }
}

impl<T> std::ops::DerefMut for Pooled<T> {
    fn deref_mut(&mut self) -> &mut [T] {
        &mut self.buf[..self.len]
    }
}

impl<T> Drop for Pooled<T> {
    fn drop(&mut self) {
        let buf = std::mem::take(&mut self.buf);
        if !buf.is_empty() {
            self.pool
                .free
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(buf);
        }
    }
}

/// Copies a contiguous tensor's data into a pooled buffer.
pub(crate) fn read<S: Shape, T>(t: &Tensor<S, f32, Cpu, T>, pool: &BufferPool<f32>) -> Pooled<f32> {
    let mut buf = pool.take(t.shape().num_elements());
    t.copy_into(&mut buf);
    buf
}

/// A new tensor of `shape` holding `data`. The storage comes from dfdx's allocation cache (see
/// [`crate::Model`]), so in steady state this is a fill and a copy, not an allocation.
pub(crate) fn write<S: Shape>(
    dev: &Cpu,
    shape: S,
    data: &[f32],
) -> Result<Tensor<S, f32, Cpu>, CpuError> {
    debug_assert_eq!(shape.num_elements(), data.len());
    let mut t = dev.try_zeros_like(&shape)?;
    t.copy_from(data);
    Ok(t)
}

/// A new tensor from an owned vector (no copy).
pub(crate) fn from_vec<S: Shape>(
    dev: &Cpu,
    shape: S,
    data: Vec<f32>,
) -> Result<Tensor<S, f32, Cpu>, CpuError> {
    dev.try_tensor_from_vec(data, shape)
}

/// Elements per rayon task of the elementwise passes (fixed, so the split never depends on the
/// thread count; elementwise results would not anyway).
pub(crate) const ELEMENTWISE_CHUNK: usize = 1 << 14;

/// `max(v, 0)`, with `+0` for every non-positive `v` and NaN. (`f32::max(-0.0, 0.0)` may return
/// either zero, and the vectorised and scalar forms of one loop differ in which.)
#[inline(always)]
pub(crate) fn relu(v: f32) -> f32 {
    if v > 0.0 { v } else { 0.0 }
}

/// `dst += src` elementwise, over rayon for large buffers.
pub(crate) fn add_assign(dst: &mut [f32], src: &[f32]) {
    assert_eq!(dst.len(), src.len());
    let add = |(d, s): (&mut [f32], &[f32])| d.iter_mut().zip(s).for_each(|(d, s)| *d += *s);
    if dst.len() <= ELEMENTWISE_CHUNK {
        add((dst, src));
    } else {
        dst.par_chunks_mut(ELEMENTWISE_CHUNK)
            .zip(src.par_chunks(ELEMENTWISE_CHUNK))
            .for_each(add);
    }
}

/// Moves the gradient of `$ghost` out of `$grads` (allocating zeros if absent) as a `Vec<f32>`.
/// Put it back with [`put_grad!`] once used.
macro_rules! take_grad {
    ($grads:expr, $ghost:expr) => {{
        let g: &mut Vec<f32> = &mut *$grads.get_or_alloc_mut(&$ghost)?;
        std::mem::take(g)
    }};
}

/// Returns a gradient taken with [`take_grad!`].
macro_rules! put_grad {
    ($grads:expr, $ghost:expr, $v:expr) => {{
        let g: &mut Vec<f32> = &mut *$grads.get_or_alloc_mut(&$ghost)?;
        *g = $v;
    }};
}

/// Accumulates `$src` into the gradient of `$ghost`.
macro_rules! acc_grad {
    ($grads:expr, $ghost:expr, $src:expr) => {{
        let g: &mut Vec<f32> = &mut *$grads.get_or_alloc_mut(&$ghost)?;
        $crate::ops::add_assign(g, $src);
    }};
}

pub(crate) use {acc_grad, put_grad, take_grad};
