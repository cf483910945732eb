//! The four norm kernels as the benches call them, one settings block per norm (the eps,
//! affine, groups and momentum of `benches/benches/*.rs`), shared by the criterion benches and
//! the `peer` timing example so both time exactly the same calls.

use norm_kernels::{
    Affine, AffineGrads, Momentum, Nchw, Parallelism, RunningStats, batch_norm_backward_train,
    batch_norm_forward_train, group_norm_backward, group_norm_forward,
    instance_norm_backward_train, instance_norm_forward_train, layer_norm_backward,
    layer_norm_forward,
};

use crate::Buffers;

/// The groups of the GroupNorm bench.
pub const GROUPS: usize = 32;
/// BatchNorm, InstanceNorm and GroupNorm eps (PyTorch's default).
pub const EPS: f32 = 1e-5;
/// LayerNorm eps (the seed's).
pub const LAYER_EPS: f32 = 1e-8;
/// BatchNorm's running-statistics momentum.
pub const MOMENTUM: f32 = 0.1;

/// A benched norm.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Norm {
    /// BatchNorm2d, train mode, running statistics updated (momentum 0.1).
    Batch,
    /// LayerNorm over `[C, H, W]`, per-element affine, eps 1e-8.
    Layer,
    /// InstanceNorm2d, train mode, affine, no running statistics.
    Instance,
    /// GroupNorm, G = 32.
    Group,
}

impl Norm {
    /// Every norm, in the order of the docs' tables.
    pub const ALL: [Norm; 4] = [Norm::Batch, Norm::Layer, Norm::Instance, Norm::Group];

    /// Short name, as `tools/peer` spells it.
    pub const fn name(self) -> &'static str {
        match self {
            Norm::Batch => "batch",
            Norm::Layer => "layer",
            Norm::Instance => "instance",
            Norm::Group => "group",
        }
    }

    /// The criterion group prefix of its bench.
    pub const fn bench_name(self) -> &'static str {
        match self {
            Norm::Batch => "batch_norm_train",
            Norm::Layer => "layer_norm",
            Norm::Instance => "instance_norm_train",
            Norm::Group => "group_norm_g32",
        }
    }

    /// The norm named `s` ([`Norm::name`]).
    pub fn parse(s: &str) -> Option<Norm> {
        Norm::ALL.into_iter().find(|n| n.name() == s)
    }
}

/// The buffers of one norm's forward + backward on one shape, plus BatchNorm's running state.
pub struct Case {
    /// Which norm.
    pub norm: Norm,
    /// Inputs, outputs, statistics.
    pub b: Buffers,
    rm: Vec<f32>,
    rv: Vec<f32>,
    nbt: u64,
}

impl Case {
    /// Deterministic inputs ([`Buffers::new`]); LayerNorm's and GroupNorm's γ are `1 + 0.25·u`
    /// as in their benches.
    pub fn new(norm: Norm, s: Nchw) -> Self {
        let (params, stats) = match norm {
            Norm::Batch => (s.c, s.c),
            Norm::Layer => (s.chw(), s.n),
            Norm::Instance => (s.c, s.n * s.c),
            Norm::Group => (s.c, s.n * GROUPS),
        };
        let mut b = Buffers::new(s, params, stats);
        if matches!(norm, Norm::Layer | Norm::Group) {
            b.gamma.iter_mut().for_each(|g| *g = 1.0 + 0.25 * *g);
        }
        Case {
            norm,
            b,
            rm: vec![0.0; s.c],
            rv: vec![1.0; s.c],
            nbt: 0,
        }
    }

    /// The train-mode forward (batch statistics; BatchNorm also updates its running state).
    pub fn forward(&mut self, par: Parallelism) {
        let b = &mut self.b;
        let affine = Some(Affine {
            gamma: &b.gamma,
            beta: &b.beta,
        });
        let (y, mean, rstd) = (&mut b.y, &mut b.mean, &mut b.rstd);
        match self.norm {
            Norm::Batch => {
                let running = RunningStats {
                    mean: &mut self.rm,
                    var: &mut self.rv,
                    num_batches_tracked: &mut self.nbt,
                    momentum: Momentum::Exponential(MOMENTUM),
                };
                batch_norm_forward_train(
                    b.shape,
                    &b.x,
                    affine,
                    EPS,
                    Some(running),
                    y,
                    mean,
                    rstd,
                    par,
                )
            }
            Norm::Layer => layer_norm_forward(b.shape, &b.x, affine, LAYER_EPS, y, mean, rstd, par),
            Norm::Instance => {
                instance_norm_forward_train(b.shape, &b.x, affine, EPS, None, y, mean, rstd, par)
            }
            Norm::Group => {
                group_norm_forward(b.shape, GROUPS, &b.x, affine, EPS, y, mean, rstd, par)
            }
        }
        .unwrap();
    }

    /// The backward from the statistics of the last [`Case::forward`], with affine gradients.
    pub fn backward(&mut self, par: Parallelism) {
        let b = &mut self.b;
        let grads = Some(AffineGrads {
            dgamma: &mut b.dgamma,
            dbeta: &mut b.dbeta,
        });
        let (s, x, dy, mean, rstd, g) =
            (b.shape, &b.x, &b.dy, &b.mean, &b.rstd, Some(&b.gamma[..]));
        let dx = &mut b.dx;
        match self.norm {
            Norm::Batch => batch_norm_backward_train(s, x, dy, mean, rstd, g, dx, grads, par),
            Norm::Layer => layer_norm_backward(s, x, dy, mean, rstd, g, dx, grads, par),
            Norm::Instance => instance_norm_backward_train(s, x, dy, mean, rstd, g, dx, grads, par),
            Norm::Group => group_norm_backward(s, GROUPS, x, dy, mean, rstd, g, dx, grads, par),
        }
        .unwrap();
    }
}
