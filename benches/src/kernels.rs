//! The four norm kernels as the benches call them, one settings block per norm (the eps,
//! affine, groups and momentum of `benches/benches/*.rs`), shared by the criterion benches and
//! the `peer` timing example so both time exactly the same calls.

use norm_kernels::{
    Affine, AffineGrads, BatchNorm, BatchRenorm, Grads, GroupNorm, InstanceNorm, LayerNorm,
    Momentum, Nchw, Output, Parallelism, RenormStats, RenormStatsMut, RunningStats, Saved, Stats,
    StatsMut, batch_norm_backward_train, batch_norm_forward_train, batch_renorm_backward_train,
    batch_renorm_forward_train, group_norm_backward, group_norm_forward,
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
    /// BatchRenorm, train mode, r_max 3, d_max 5 (the paper's final limits).
    Renorm,
}

impl Norm {
    /// Every norm, in the order of the docs' tables.
    pub const ALL: [Norm; 5] = [
        Norm::Batch,
        Norm::Layer,
        Norm::Instance,
        Norm::Group,
        Norm::Renorm,
    ];

    /// Short name, as `tools/peer` spells it.
    pub const fn name(self) -> &'static str {
        match self {
            Norm::Batch => "batch",
            Norm::Layer => "layer",
            Norm::Instance => "instance",
            Norm::Group => "group",
            Norm::Renorm => "renorm",
        }
    }

    /// The criterion group prefix of its bench.
    pub const fn bench_name(self) -> &'static str {
        match self {
            Norm::Batch => "batch_norm_train",
            Norm::Layer => "layer_norm",
            Norm::Instance => "instance_norm_train",
            Norm::Group => "group_norm_g32",
            Norm::Renorm => "batch_renorm_train",
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
    /// BatchRenorm's saved corrections.
    r: Vec<f32>,
    d: Vec<f32>,
}

const BATCH: BatchNorm = BatchNorm {
    eps: EPS,
    momentum: Momentum::Exponential(MOMENTUM),
    affine: true,
    track_running_stats: true,
};
const RENORM: BatchRenorm = BatchRenorm {
    eps: EPS,
    momentum: Momentum::Exponential(MOMENTUM),
    affine: true,
    r_max: 3.0,
    d_max: 5.0,
};
const LAYER: LayerNorm = LayerNorm {
    eps: LAYER_EPS,
    affine: true,
};
const INSTANCE: InstanceNorm = InstanceNorm {
    eps: EPS,
    momentum: Momentum::Exponential(MOMENTUM),
    affine: true,
    track_running_stats: false,
};
const GROUP: GroupNorm = GroupNorm {
    groups: GROUPS,
    eps: EPS,
    affine: true,
};

impl Case {
    /// Deterministic inputs ([`Buffers::new`]); LayerNorm's and GroupNorm's γ are `1 + 0.25·u`
    /// as in their benches.
    pub fn new(norm: Norm, s: Nchw) -> Self {
        let (params, stats) = match norm {
            Norm::Batch | Norm::Renorm => (s.c, s.c),
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
            r: vec![0.0; s.c],
            d: vec![0.0; s.c],
        }
    }

    /// The train-mode forward (batch statistics; BatchNorm also updates its running state).
    pub fn forward(&mut self, par: Parallelism) {
        let b = &mut self.b;
        let affine = Some(Affine {
            gamma: &b.gamma,
            beta: &b.beta,
        });
        let running = RunningStats {
            mean: &mut self.rm,
            var: &mut self.rv,
            num_batches_tracked: &mut self.nbt,
        };
        let (s, x) = (b.shape, &b.x[..]);
        let stats = StatsMut {
            mean: &mut b.mean,
            rstd: &mut b.rstd,
        };
        let out = Output { y: &mut b.y, stats };
        match self.norm {
            Norm::Batch => batch_norm_forward_train(&BATCH, s, x, affine, Some(running), out, par),
            Norm::Layer => layer_norm_forward(&LAYER, s, x, affine, out, par),
            Norm::Instance => instance_norm_forward_train(&INSTANCE, s, x, affine, None, out, par),
            Norm::Group => group_norm_forward(&GROUP, s, x, affine, out, par),
            Norm::Renorm => {
                let Output { y, stats } = out;
                let StatsMut { mean, rstd } = stats;
                let (r, d) = (&mut self.r[..], &mut self.d[..]);
                let stats = RenormStatsMut { mean, rstd, r, d };
                let out = Output { y, stats };
                batch_renorm_forward_train(&RENORM, s, x, affine, running, out, par)
            }
        }
        .unwrap();
    }

    /// The backward from the statistics of the last [`Case::forward`], with affine gradients.
    pub fn backward(&mut self, par: Parallelism) {
        let b = &mut self.b;
        let grads = Grads {
            dx: &mut b.dx,
            affine: Some(AffineGrads {
                dgamma: &mut b.dgamma,
                dbeta: &mut b.dbeta,
            }),
        };
        let (s, dy, g) = (b.shape, &b.dy[..], Some(&b.gamma[..]));
        let stats = Stats {
            mean: &b.mean,
            rstd: &b.rstd,
        };
        let saved = Saved { x: &b.x, stats };
        match self.norm {
            Norm::Batch => batch_norm_backward_train(&BATCH, s, saved, dy, g, grads, par),
            Norm::Layer => layer_norm_backward(&LAYER, s, saved, dy, g, grads, par),
            Norm::Instance => instance_norm_backward_train(&INSTANCE, s, saved, dy, g, grads, par),
            Norm::Group => group_norm_backward(&GROUP, s, saved, dy, g, grads, par),
            Norm::Renorm => {
                let (mean, rstd, r, d) = (stats.mean, stats.rstd, &self.r[..], &self.d[..]);
                let stats = RenormStats { mean, rstd, r, d };
                let saved = Saved { x: &b.x, stats };
                batch_renorm_backward_train(&RENORM, s, saved, dy, g, grads, par)
            }
        }
        .unwrap();
    }
}
