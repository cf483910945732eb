//! One forward + backward through the descriptor [`Norm`], on seeded inputs, with every bit it
//! writes collected: shared by the tests that compare two ways of computing the same call.

use super::check::{bits, data};
use norm_kernels::*;

pub use super::running::Inputs;

/// One of each norm, with running statistics where the norm can keep them.
pub fn every_norm() -> Vec<Norm> {
    vec![
        Norm::Batch(BatchNorm::default()),
        Norm::Layer(LayerNorm::default()),
        Norm::Instance(InstanceNorm {
            track_running_stats: true,
            ..InstanceNorm::default()
        }),
        Norm::Group(GroupNorm::new(8)),
        Norm::BatchRenorm(BatchRenorm::default()),
    ]
}

/// The inputs of one call, with gamma and beta of the norm's affine length.
pub fn inputs(norm: &Norm, shape: Nchw, seed: u64) -> Inputs {
    let params = norm.affine_shape(shape).iter().product();
    Inputs {
        x: data(shape.len(), seed, 1.0, 5.0),
        dy: data(shape.len(), seed + 1, -1.0, 1.0),
        gamma: data(params, seed + 2, 0.5, 1.5),
        beta: data(params, seed + 3, -0.5, 0.5),
        rm: data(shape.c, seed + 4, 2.0, 4.0),
        rv: data(shape.c, seed + 5, 0.5, 2.0),
    }
}

impl Inputs {
    pub fn affine(&self, norm: &Norm) -> Option<Affine<'_>> {
        norm.affine().then_some(Affine {
            gamma: &self.gamma,
            beta: &self.beta,
        })
    }
    pub fn gamma(&self, norm: &Norm) -> Option<&[f32]> {
        norm.affine().then_some(&self.gamma[..])
    }
}

/// Everything one forward + backward writes: y, the saved values, the running statistics and
/// `num_batches_tracked` after the call, dx, dgamma, dbeta.
#[derive(Debug, PartialEq)]
pub struct Outs {
    pub y: Vec<u32>,
    pub saved: Vec<u32>,
    pub running: (Vec<u32>, Vec<u32>, u64),
    pub dx: Vec<u32>,
    pub dgamma: Vec<u32>,
    pub dbeta: Vec<u32>,
}

/// Fresh output buffers: y, mean, rstd (`stats` each), dx, dgamma, dbeta (`params` each).
pub type Bufs = [Vec<f32>; 6];

pub fn bufs(shape: Nchw, stats: usize, params: usize) -> Bufs {
    let z = |n| vec![f32::NAN; n];
    [
        z(shape.len()),
        z(stats),
        z(stats),
        z(shape.len()),
        z(params),
        z(params),
    ]
}

/// The forward and backward through the descriptor.
pub fn described(norm: &Norm, mode: Mode, shape: Nchw, inp: &Inputs, par: Parallelism) -> Outs {
    described_at(norm, mode, shape, inp, par, (0, 0))
}

/// [`described`] with `x`, `dy` starting `at.0` values and `y`, `dx` `at.1` values into their
/// buffers (where the caller's buffers start must not change a bit).
pub fn described_at(
    norm: &Norm,
    mode: Mode,
    shape: Nchw,
    inp: &Inputs,
    par: Parallelism,
    at: (usize, usize),
) -> Outs {
    let shifted = |v: &[f32], k: usize| [vec![0.0; k], v.to_vec()].concat();
    let (xb, dyb) = (shifted(&inp.x, at.0), shifted(&inp.dy, at.0));
    let (x, dy) = (&xb[at.0..], &dyb[at.0..]);
    let params = norm.affine_shape(shape).iter().product();
    let (mut rm, mut rv, mut nbt) = (inp.rm.clone(), inp.rv.clone(), 3u64);
    let mut saved = vec![f32::NAN; norm.saved_len(shape, mode)];
    let (mut dg, mut db) = (vec![f32::NAN; params], vec![f32::NAN; params]);
    let mut yb = vec![f32::NAN; at.1 + shape.len()];
    let mut dxb = yb.clone();
    let (y, dx) = (&mut yb[at.1..], &mut dxb[at.1..]);
    let running = norm.tracks_running().then_some(RunningStats {
        mean: &mut rm,
        var: &mut rv,
        num_batches_tracked: &mut nbt,
    });
    let fwd = Forward {
        shape,
        x,
        affine: inp.affine(norm),
        running,
        y,
        saved: &mut saved,
    };
    norm.forward(mode, fwd, par).unwrap();
    let bwd = Backward {
        shape,
        x,
        dy,
        saved: &saved,
        gamma: inp.gamma(norm),
        grads: Grads {
            dx,
            affine: Some(AffineGrads {
                dgamma: &mut dg,
                dbeta: &mut db,
            }),
        },
    };
    norm.backward(mode, bwd, par).unwrap();
    Outs {
        y: bits(&yb[at.1..]),
        saved: bits(&saved),
        running: (bits(&rm), bits(&rv), nbt),
        dx: bits(&dxb[at.1..]),
        dgamma: bits(&dg),
        dbeta: bits(&db),
    }
}
