//! The CIFAR ResNets of He et al. (2016, §4.2): a 3×3 conv to `c₁` channels, three stages of `n`
//! basic blocks at `c₁, c₂, c₃ = 16, 32, 64 (× width)` channels on 32×32, 16×16 and 8×8 maps
//! (stride 2 in the first block of stages 2 and 3), global average pooling and a linear layer;
//! depth `6n + 2` (ResNet-8, -14, -20 for `n = 1, 2, 3`).
//!
//! Basic block: `y = relu(norm2(conv2(relu(norm1(conv1(x))))) + shortcut(x))`, the shortcut the
//! identity, or a 1×1 conv (stride 2) → norm where the shape changes (the paper's option B).
//! The chosen norm follows every conv; convs have no bias (the norm's shift replaces it; with
//! `none` there is none). Parameter names are PyTorch's `state_dict` keys of the twin module in
//! `tools/torch_twin.py`: `conv1.weight`, `norm1.weight`, `layer2.0.conv1.weight`,
//! `layer2.0.shortcut.0.weight`, `layer2.0.shortcut.1.bias`, `fc.weight`, ...

use dfdx::tensor::{Cpu, Merge, NoneTape, PutTape, SplitTape, Tape, Tensor};
use rand_chacha::ChaCha8Rng;

use crate::{
    ModelConfig, Param, TrainError,
    model::{INPUT, NormCtx, fc_params, norm_params, uniform},
    ops::{Shape1, Shape4, conv_strided::conv_strided, norm::Post, residual::add_relu},
};

/// A bias-free conv followed by a norm.
#[derive(Clone, Copy, Debug)]
struct ConvNorm {
    conv: usize,
    c_out: usize,
    k: usize,
    stride: usize,
    norm: Option<(usize, usize)>,
    /// Index among the model's norm layers (= its running statistics' index).
    layer: usize,
}

/// One basic block.
#[derive(Clone, Copy, Debug)]
struct Block {
    conv1: ConvNorm,
    conv2: ConvNorm,
    shortcut: Option<ConvNorm>,
}

/// Where a ResNet's parameters are in the model's list.
#[derive(Clone, Debug)]
pub(crate) struct Layout {
    stem: ConvNorm,
    blocks: Vec<Block>,
    /// `fc.weight`, `fc.bias`.
    pub(crate) fc: (usize, usize),
    /// Name prefix and channels of every norm layer, in layer order.
    norms: Vec<(String, usize)>,
}

struct Builder<'a> {
    rng: &'a mut ChaCha8Rng,
    params: &'a mut Vec<Param>,
    spec: Option<norm_kernels::Norm>,
    norms: Vec<(String, usize)>,
}

impl Builder<'_> {
    /// `{conv}.weight` `[c_out, c_in, k, k]`, then the norm `{norm}` over `h × w` outputs.
    fn conv_norm(
        &mut self,
        (conv, norm): (&str, &str),
        (c_in, c_out): (usize, usize),
        (k, stride): (usize, usize),
        (h, w): (usize, usize),
    ) -> ConvNorm {
        let conv = uniform(
            self.rng,
            self.params,
            format!("{conv}.weight"),
            vec![c_out, c_in, k, k],
            c_in * k * k,
            true,
        );
        let norm_idx = norm_params(self.params, self.spec, norm, c_out, h, w);
        self.norms.push((norm.to_owned(), c_out));
        ConvNorm {
            conv,
            c_out,
            k,
            stride,
            norm: norm_idx,
            layer: self.norms.len() - 1,
        }
    }
}

impl Layout {
    /// Appends the ResNet's parameters to `params`, initialised like PyTorch's defaults in
    /// `state_dict` order.
    pub(crate) fn new(
        cfg: &ModelConfig,
        spec: Option<norm_kernels::Norm>,
        rng: &mut ChaCha8Rng,
        params: &mut Vec<Param>,
    ) -> Self {
        let n = cfg
            .arch
            .blocks_per_stage()
            .expect("a ResNet has blocks per stage");
        let widths = cfg.stage_widths();
        let (c0, mut h, mut w) = INPUT;
        let mut b = Builder {
            rng: &mut *rng,
            params: &mut *params,
            spec,
            norms: Vec::new(),
        };
        let stem = b.conv_norm(("conv1", "norm1"), (c0, widths[0]), (3, 1), (h, w));
        let mut c_in = widths[0];
        let mut blocks = Vec::new();
        for (s, &c) in widths.iter().enumerate() {
            for i in 0..n {
                let stride = if s > 0 && i == 0 { 2 } else { 1 };
                let (oh, ow) = ((h - 1) / stride + 1, (w - 1) / stride + 1);
                let p = format!("layer{}.{i}", s + 1);
                let conv1 = b.conv_norm(
                    (&format!("{p}.conv1"), &format!("{p}.norm1")),
                    (c_in, c),
                    (3, stride),
                    (oh, ow),
                );
                let conv2 = b.conv_norm(
                    (&format!("{p}.conv2"), &format!("{p}.norm2")),
                    (c, c),
                    (3, 1),
                    (oh, ow),
                );
                let shortcut = (stride != 1 || c_in != c).then(|| {
                    b.conv_norm(
                        (&format!("{p}.shortcut.0"), &format!("{p}.shortcut.1")),
                        (c_in, c),
                        (1, stride),
                        (oh, ow),
                    )
                });
                blocks.push(Block {
                    conv1,
                    conv2,
                    shortcut,
                });
                (c_in, h, w) = (c, oh, ow);
            }
        }
        let norms = b.norms;
        let fc = fc_params(rng, params, c_in);
        Self {
            stem,
            blocks,
            fc,
            norms,
        }
    }

    /// Name prefix and channels of every norm layer, in order.
    pub(crate) fn norm_names(&self) -> Vec<(String, usize)> {
        self.norms.clone()
    }

    fn conv_norm<TX, T>(
        cn: &ConvNorm,
        x: Tensor<Shape4, f32, Cpu, TX>,
        take: &mut dyn FnMut(usize) -> Tensor<Shape1, f32, Cpu, T>,
        ctx: &mut NormCtx<'_>,
        post: Post,
    ) -> Result<Tensor<Shape4, f32, Cpu, T>, TrainError>
    where
        TX: Tape<f32, Cpu>,
        T: Tape<f32, Cpu> + Merge<T> + Merge<TX>,
    {
        let h = conv_strided(x, take(cn.conv), (cn.c_out, cn.k, cn.stride), ctx.pool())?;
        let affine = cn.norm.map(|(g, b)| (take(g), take(b)));
        ctx.norm(h, affine, Some(cn.layer), post)
    }

    /// The forward pass up to the last stage's feature maps (before global average pooling).
    pub(crate) fn forward<T>(
        &self,
        x: Tensor<Shape4, f32, Cpu>,
        take: &mut dyn FnMut(usize) -> Tensor<Shape1, f32, Cpu, T>,
        ctx: &mut NormCtx<'_>,
    ) -> Result<Tensor<Shape4, f32, Cpu, T>, TrainError>
    where
        T: Tape<f32, Cpu> + Merge<T> + Merge<NoneTape>,
    {
        let mut h = Self::conv_norm(&self.stem, x, take, ctx, Post::Relu)?;
        for b in &self.blocks {
            // The input feeds both branches: one copy carries the tape, the other starts an
            // empty one; the clones share an id, so both branches' gradients add up in it.
            let (h0, tape) = h.split_tape();
            let main_in = h0.clone().put_tape(tape);
            let short_in = h0.put_tape(T::default());
            let y = Self::conv_norm(&b.conv1, main_in, take, ctx, Post::Relu)?;
            let y = Self::conv_norm(&b.conv2, y, take, ctx, Post::Identity)?;
            let s = match &b.shortcut {
                Some(cn) => Self::conv_norm(cn, short_in, take, ctx, Post::Identity)?,
                None => short_in,
            };
            h = add_relu(y, s, ctx.pool())?;
        }
        Ok(h)
    }
}
