//! The networks, for 3×32×32 inputs and 10 classes: the plain CNN — three blocks of conv3×3 →
//! norm → ReLU (→ 2×2 max pool after the first two), global average pooling and a linear
//! classifier — and the CIFAR ResNets ([`crate::resnet`]).

use dfdx::{
    prelude::{Axes2, Axis, BroadcastTo, MeanTo, PermuteTo, ReshapeTo, TryMatMul},
    shapes::{HasShape, Shape},
    tensor::{Cache, Cpu, Merge, NoneTape, OwnedTape, PutTape, SplitTape, Tape, Tensor, Trace},
    tensor_ops::Backward,
};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use norm_kernels::{Mode, Nchw, Norm, NormKind};

use crate::{
    Arch, ModelConfig, RunningFrom, TrainError, data,
    error::tensor,
    ops::{
        BufferPool, Shape1, Shape4, conv,
        norm::{self, AffineTensors, NormLayer, Post, Running},
        shares,
    },
    resnet,
};

/// Input channels, height and width.
pub const INPUT: (usize, usize, usize) = (data::CHANNELS, data::IMAGE_SIZE, data::IMAGE_SIZE);
/// Images per evaluation batch.
pub const EVAL_BATCH: usize = 250;

/// One learnable tensor, stored flat in PyTorch's layout.
#[derive(Clone, Debug, PartialEq)]
pub struct Param {
    /// PyTorch-style name: `conv1.weight`, `norm2.bias`, `fc.weight`, ...
    pub name: String,
    /// PyTorch's shape (`[C_out, C_in, 3, 3]` for a conv, `[10, C]` for the linear layer).
    pub shape: Vec<usize>,
    /// The values, row-major.
    pub data: Vec<f32>,
    /// Whether weight decay applies (conv and linear weights only).
    pub decay: bool,
}

/// One entry of [`Model::state_dict`]: PyTorch's name and shape, and the values.
#[derive(Clone, Debug, PartialEq)]
pub struct StateTensor<'a> {
    /// `conv1.weight`, `norm1.running_mean`, ...
    pub name: String,
    /// PyTorch's shape (`[]` for a scalar).
    pub shape: Vec<usize>,
    /// The values.
    pub data: StateData<'a>,
}

/// The values of a [`StateTensor`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum StateData<'a> {
    /// `float32`, row-major.
    F32(&'a [f32]),
    /// A counter stored as PyTorch's `int64` scalar (`num_batches_tracked`).
    Count(u64),
}

/// One entry of [`Model::state_dict_mut`].
#[derive(Debug)]
pub struct StateTensorMut<'a> {
    /// As in [`StateTensor`].
    pub name: String,
    /// As in [`StateTensor`].
    pub shape: Vec<usize>,
    /// The values to overwrite.
    pub data: StateDataMut<'a>,
}

/// The values of a [`StateTensorMut`].
#[derive(Debug)]
pub enum StateDataMut<'a> {
    /// `float32`, row-major.
    F32(&'a mut [f32]),
    /// An `int64` scalar counter.
    Count(&'a mut u64),
}

/// What [`Model::loss_and_grads`] returns: the mean loss, the logits `[n, 10]` and one gradient
/// per parameter.
pub type LossAndGrads = (f32, Vec<f32>, Vec<Vec<f32>>);

/// Indices into the parameter list of one conv block.
#[derive(Clone, Copy, Debug)]
struct BlockIdx {
    conv_w: usize,
    conv_b: usize,
    norm: Option<(usize, usize)>,
}

/// Where each layer's parameters are in the parameter list.
#[derive(Clone, Debug)]
enum Net {
    Plain {
        blocks: [BlockIdx; 3],
        fc: (usize, usize),
    },
    ResNet(resnet::Layout),
}

/// The network with its parameters, its norm layers (with their running statistics) and
/// reusable buffers.
#[derive(Debug)]
pub struct Model {
    cfg: ModelConfig,
    params: Vec<Param>,
    net: Net,
    /// Every norm layer, in the order of the forward pass (empty without a norm).
    layers: Vec<NormLayer>,
    /// PyTorch name prefix of each norm layer (`norm1`, `layer2.0.shortcut.1`), parallel to
    /// `layers`.
    layer_names: Vec<String>,
    workers: usize,
    running_from: RunningFrom,
    training: bool,
    dev: Cpu,
    pool: BufferPool<f32>,
    index_pool: BufferPool<u8>,
}

impl Model {
    /// A freshly initialised model, like PyTorch's defaults: conv and linear weights and biases
    /// `U(-1/√fan_in, 1/√fan_in)` (Kaiming-uniform with `a = √5`), norm weights 1 and biases 0,
    /// running mean 0 and variance 1. The draws come from ChaCha8 seeded with `seed`, in
    /// parameter order.
    pub fn new(cfg: &ModelConfig, seed: u64) -> Result<Self, TrainError> {
        cfg.validate()?;
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut params = Vec::new();
        let spec = cfg.norm;
        let (net, names) = match cfg.arch {
            Arch::Plain => Self::plain(cfg, spec, &mut rng, &mut params),
            _ => {
                let layout = resnet::Layout::new(cfg, spec, &mut rng, &mut params);
                let names = layout.norm_names();
                (Net::ResNet(layout), names)
            }
        };
        let (layers, layer_names) = match cfg.norm {
            Some(n) => names
                .into_iter()
                .map(|(name, c)| (NormLayer::new(n, c), name))
                .unzip(),
            None => (Vec::new(), Vec::new()),
        };
        let dev = Cpu::default();
        // Reuse dfdx's allocations across steps: every step allocates the same sizes.
        dev.enable_cache();
        Ok(Self {
            cfg: cfg.clone(),
            params,
            net,
            layers,
            layer_names,
            workers: 1,
            running_from: RunningFrom::Worker0,
            training: true,
            dev,
            pool: BufferPool::default(),
            index_pool: BufferPool::default(),
        })
    }

    /// The plain CNN's parameters, in order, and its norm layers' names.
    fn plain(
        cfg: &ModelConfig,
        spec: Option<Norm>,
        rng: &mut ChaCha8Rng,
        params: &mut Vec<Param>,
    ) -> (Net, Vec<(String, usize)>) {
        let (c0, mut h, mut w) = INPUT;
        let mut c_in = c0;
        let mut blocks = Vec::new();
        for (b, &c) in cfg.widths.iter().enumerate() {
            let fan_in = c_in * 9;
            let conv_w = uniform(
                rng,
                params,
                format!("conv{}.weight", b + 1),
                vec![c, c_in, 3, 3],
                fan_in,
                true,
            );
            let conv_b = uniform(
                rng,
                params,
                format!("conv{}.bias", b + 1),
                vec![c],
                fan_in,
                false,
            );
            let norm = norm_params(params, spec, &format!("norm{}", b + 1), c, h, w);
            blocks.push(BlockIdx {
                conv_w,
                conv_b,
                norm,
            });
            c_in = c;
            if b < 2 {
                (h, w) = (h / 2, w / 2);
            }
        }
        let fc = fc_params(rng, params, c_in);
        let names = (1..=3)
            .map(|b| format!("norm{b}"))
            .zip(cfg.widths)
            .collect();
        (
            Net::Plain {
                blocks: [blocks[0], blocks[1], blocks[2]],
                fc,
            },
            names,
        )
    }

    /// Sets the data-parallel split of train-mode forward passes: BatchNorm computes its
    /// statistics per share of `workers` equal shares (the batch must divide), its running
    /// statistics follow `running_from`. `1` is one worker, the plain computation. `0` is
    /// [`TrainError::WorkersZero`].
    pub fn set_workers(
        &mut self,
        workers: usize,
        running_from: RunningFrom,
    ) -> Result<(), TrainError> {
        if workers == 0 {
            return Err(TrainError::WorkersZero);
        }
        self.workers = workers;
        self.running_from = running_from;
        Ok(())
    }

    /// The data-parallel split ([`Model::set_workers`]).
    pub fn workers(&self) -> usize {
        self.workers
    }

    /// PyTorch name prefixes of the norm layers that track running statistics, parallel to
    /// [`Model::running`] (`norm1`, `layer2.0.shortcut.1`; empty for the other norms).
    pub fn running_names(&self) -> Vec<&str> {
        self.layers
            .iter()
            .zip(&self.layer_names)
            .filter(|(l, _)| l.running().is_some())
            .map(|(_, n)| n.as_str())
            .collect()
    }

    /// The configuration it was built with.
    pub fn config(&self) -> &ModelConfig {
        &self.cfg
    }

    /// The learnable tensors, in order. Plain CNN: per block `conv.weight`, `conv.bias`, then
    /// `norm.weight`, `norm.bias` (absent for `none`); then `fc.weight`, `fc.bias`. ResNet: PyTorch's
    /// `state_dict` order (`conv1.weight`, `norm1.*`, `layer1.0.conv1.weight`, ..., `fc.bias`).
    pub fn params(&self) -> &[Param] {
        &self.params
    }

    /// Mutable access to the parameter values (the list itself is fixed).
    pub fn params_mut(&mut self) -> &mut [Param] {
        &mut self.params
    }

    /// Every tensor of PyTorch's `state_dict()` for the same module, learnable or not: the
    /// parameters ([`Model::params`]) and the buffers of every norm layer with running
    /// statistics, `{layer}.running_mean`, `{layer}.running_var` and `{layer}.num_batches_tracked`
    /// (an int64 scalar). Checkpoints are written from this list and read back into
    /// [`Model::state_dict_mut`], so a model with other layers only has to list its tensors here.
    pub fn state_dict(&self) -> Vec<StateTensor<'_>> {
        let mut out: Vec<StateTensor<'_>> = self
            .params
            .iter()
            .map(|p| StateTensor {
                name: p.name.clone(),
                shape: p.shape.clone(),
                data: StateData::F32(&p.data),
            })
            .collect();
        for (layer, name) in self.layers.iter().zip(&self.layer_names) {
            let Some(r) = layer.running() else { continue };
            let c = r.mean.len();
            out.push(StateTensor {
                name: format!("{name}.running_mean"),
                shape: vec![c],
                data: StateData::F32(&r.mean),
            });
            out.push(StateTensor {
                name: format!("{name}.running_var"),
                shape: vec![c],
                data: StateData::F32(&r.var),
            });
            out.push(StateTensor {
                name: format!("{name}.num_batches_tracked"),
                shape: vec![],
                data: StateData::Count(r.num_batches_tracked),
            });
        }
        out
    }

    /// [`Model::state_dict`] with mutable data, same names, shapes and order.
    pub fn state_dict_mut(&mut self) -> Vec<StateTensorMut<'_>> {
        let mut out: Vec<StateTensorMut<'_>> = self
            .params
            .iter_mut()
            .map(|p| StateTensorMut {
                name: p.name.clone(),
                shape: p.shape.clone(),
                data: StateDataMut::F32(&mut p.data),
            })
            .collect();
        for (layer, name) in self.layers.iter_mut().zip(&self.layer_names) {
            let Some(r) = layer.running_mut() else {
                continue;
            };
            let c = r.mean.len();
            out.push(StateTensorMut {
                name: format!("{name}.running_mean"),
                shape: vec![c],
                data: StateDataMut::F32(&mut r.mean),
            });
            out.push(StateTensorMut {
                name: format!("{name}.running_var"),
                shape: vec![c],
                data: StateDataMut::F32(&mut r.var),
            });
            out.push(StateTensorMut {
                name: format!("{name}.num_batches_tracked"),
                shape: vec![],
                data: StateDataMut::Count(&mut r.num_batches_tracked),
            });
        }
        out
    }

    /// Switches every norm layer with running statistics to PyTorch's `momentum = None` (a
    /// cumulative average of the batches' statistics, for re-estimating them), or back to the
    /// configured norm.
    pub(crate) fn set_cumulative_running(&mut self, on: bool) {
        let Some(base) = self.cfg.norm else { return };
        let norm = if on {
            base.with("momentum", "none").unwrap_or(base)
        } else {
            base
        };
        for layer in &mut self.layers {
            layer.set_norm(norm);
        }
    }

    /// Running statistics per norm layer, for norms that track them (empty for the others).
    pub fn running(&self) -> Vec<&Running> {
        self.layers.iter().filter_map(NormLayer::running).collect()
    }

    pub(crate) fn running_mut(&mut self) -> Vec<&mut Running> {
        self.layers
            .iter_mut()
            .filter_map(NormLayer::running_mut)
            .collect()
    }

    /// Sets every norm layer's settings to the configured norm at progress `t` (0 to 1) of its
    /// settings' warm-up ([`norm_kernels::Norm::ramped`]); the identity for most norms.
    pub fn ramp_norm(&mut self, t: f32) {
        if let Some(norm) = self.cfg.norm {
            let ramped = norm.ramped(t);
            for layer in &mut self.layers {
                layer.set_norm(ramped);
            }
        }
    }

    /// Train mode (PyTorch's `model.train()`): BatchNorm uses and updates batch statistics.
    pub fn train_mode(&mut self) {
        self.training = true;
    }

    /// Eval mode (PyTorch's `model.eval()`): BatchNorm uses its running statistics.
    pub fn eval_mode(&mut self) {
        self.training = false;
    }

    /// Whether the model is in train mode.
    pub fn is_training(&self) -> bool {
        self.training
    }

    fn forward_t<T>(
        &mut self,
        x: Tensor<Shape4, f32, Cpu>,
        p: Vec<Tensor<Shape1, f32, Cpu, T>>,
    ) -> Result<Tensor<(usize, usize), f32, Cpu, T>, TrainError>
    where
        T: Tape<f32, Cpu> + Merge<T> + Merge<NoneTape>,
    {
        let mut p: Vec<Option<Tensor<Shape1, f32, Cpu, T>>> = p.into_iter().map(Some).collect();
        let mut take = |i: usize| p[i].take().expect("each parameter is used once");
        let mut ctx = NormCtx {
            mode: if self.training {
                Mode::Train
            } else {
                Mode::Eval
            },
            workers: self.workers,
            running_from: self.running_from,
            layers: &mut self.layers,
            pool: &self.pool,
            index_pool: &self.index_pool,
        };
        let (h, fc) = match &self.net {
            Net::Plain { blocks, fc } => {
                let blocks = *blocks;
                let mut h = conv::conv3x3(
                    x,
                    take(blocks[0].conv_w),
                    take(blocks[0].conv_b),
                    &self.pool,
                )?;
                for (b, idx) in blocks.iter().enumerate() {
                    if b > 0 {
                        h = conv::conv3x3(h, take(idx.conv_w), take(idx.conv_b), &self.pool)?;
                    }
                    let affine = idx.norm.map(|(g, be)| (take(g), take(be)));
                    // norm → ReLU (→ 2×2 max pool), fused into one op.
                    let post = if b < 2 {
                        Post::ReluMaxPool2
                    } else {
                        Post::Relu
                    };
                    h = ctx.norm(h, affine, Some(b), post)?;
                }
                (h, *fc)
            }
            Net::ResNet(layout) => (layout.forward(x, &mut take, &mut ctx)?, layout.fc),
        };
        let n = h.shape().0;
        let c = h.shape().1;
        let g: Tensor<(usize, usize), f32, Cpu, T> =
            h.try_mean::<_, Axes2<2, 3>>().map_err(tensor)?;
        let fc_w = take(fc.0)
            .try_reshape_like(&(data::NUM_CLASSES, c))
            .map_err(tensor)?;
        let fc_w = fc_w
            .try_permute::<(usize, usize), Axes2<1, 0>>()
            .map_err(tensor)?;
        let fc_b = take(fc.1)
            .try_broadcast_like::<_, Axis<0>>(&(n, data::NUM_CLASSES))
            .map_err(tensor)?;
        Ok(g.try_matmul(fc_w).map_err(tensor)? + fc_b)
    }

    fn input(&self, x: &[f32], n: usize) -> Result<Tensor<Shape4, f32, Cpu>, TrainError> {
        let (c, h, w) = INPUT;
        if x.len() != n * c * h * w {
            return Err(TrainError::Input(format!(
                "the input has {} values, expected {n}×{c}×{h}×{w}",
                x.len()
            )));
        }
        crate::ops::write(&self.dev, (n, c, h, w), x).map_err(tensor)
    }

    fn param_tensors(&self) -> Result<Vec<Tensor<Shape1, f32, Cpu>>, TrainError> {
        self.params
            .iter()
            .map(|p| crate::ops::write(&self.dev, (p.data.len(),), &p.data).map_err(tensor))
            .collect()
    }

    /// Logits `[n, 10]` (row-major) for `n` normalised images `x` (`[n, 3, 32, 32]`), without a
    /// tape, in the current mode. Train mode updates BatchNorm's running statistics, as PyTorch.
    pub fn logits(&mut self, x: &[f32], n: usize) -> Result<Vec<f32>, TrainError> {
        let x = self.input(x, n)?;
        let p = self.param_tensors()?;
        Ok(self.forward_t::<NoneTape>(x, p)?.as_vec())
    }

    /// One forward and backward pass in the current mode: the mean cross-entropy of `n` images
    /// against `labels`, the logits `[n, 10]`, and the gradient of every parameter (same order
    /// and layout as [`Model::params`]).
    pub fn loss_and_grads(
        &mut self,
        x: &[f32],
        labels: &[usize],
    ) -> Result<LossAndGrads, TrainError> {
        let n = labels.len();
        let x = self.input(x, n)?;
        let p = self.param_tensors()?;
        let traced: Vec<Tensor<Shape1, f32, Cpu, OwnedTape<f32, Cpu>>> =
            p.iter().map(|t| t.leaky_trace()).collect();
        let logits = self.forward_t(x, traced)?;
        let logits_v = logits.as_vec();
        let mut onehot = vec![0.0f32; n * data::NUM_CLASSES];
        for (i, &l) in labels.iter().enumerate() {
            if l >= data::NUM_CLASSES {
                return Err(TrainError::Input(format!(
                    "label {l} is out of range (0..{})",
                    data::NUM_CLASSES
                )));
            }
            onehot[i * data::NUM_CLASSES + l] = 1.0;
        }
        let targets =
            crate::ops::from_vec(&self.dev, (n, data::NUM_CLASSES), onehot).map_err(tensor)?;
        let loss = dfdx::losses::cross_entropy_with_logits_loss(logits, targets);
        let loss_v = loss.as_vec()[0];
        let grads = loss.try_backward().map_err(tensor)?;
        // A memcpy each, where dfdx's `as_vec` walks the strides element by element.
        let g = p
            .iter()
            .map(|t| {
                let mut v = vec![0.0f32; t.shape().num_elements()];
                grads.get(t).copy_into(&mut v);
                v
            })
            .collect();
        Ok((loss_v, logits_v, g))
    }

    /// Top-1 accuracy (fraction) on `data` in eval mode, in batches of [`EVAL_BATCH`]; restores the
    /// previous mode. An empty set gives `NaN`.
    pub fn evaluate(
        &mut self,
        data: &data::Dataset,
        norm: &data::Normalizer,
    ) -> Result<f32, TrainError> {
        let len = data.len();
        if len == 0 {
            return Ok(f32::NAN);
        }
        let was_training = self.training;
        self.eval_mode();
        let (c, h, w) = INPUT;
        let mut buf = vec![0.0f32; EVAL_BATCH.min(len) * c * h * w];
        let mut labels = vec![0usize; EVAL_BATCH.min(len)];
        let mut rng = ChaCha8Rng::seed_from_u64(0); // unused without augmentation
        let indices: Vec<usize> = (0..len).collect();
        let mut correct = 0usize;
        let result = (|| {
            for idx in indices.chunks(EVAL_BATCH) {
                let n = idx.len();
                let (xb, lb) = (&mut buf[..n * c * h * w], &mut labels[..n]);
                data::fill_batch(data, idx, norm, &data::Augment::NONE, &mut rng, xb, lb);
                let logits = self.logits(xb, n)?;
                correct += count_correct(&logits, lb);
            }
            Ok(correct as f32 / len as f32)
        })();
        self.training = was_training;
        result
    }
}

/// Number of rows of `logits` (`[n, 10]`) whose arg-max (first on ties) equals the label.
pub fn count_correct(logits: &[f32], labels: &[usize]) -> usize {
    logits
        .chunks(data::NUM_CLASSES)
        .zip(labels)
        .filter(|(row, l)| {
            let mut best = 0;
            for (j, &v) in row.iter().enumerate() {
                if v > row[best] {
                    best = j;
                }
            }
            best == **l
        })
        .count()
}

/// Appends a parameter drawn from `U(-1/√fan_in, 1/√fan_in)` (PyTorch's default for conv and
/// linear layers) and returns its index.
pub(crate) fn uniform(
    rng: &mut ChaCha8Rng,
    params: &mut Vec<Param>,
    name: String,
    shape: Vec<usize>,
    fan_in: usize,
    decay: bool,
) -> usize {
    let bound = 1.0 / (fan_in as f32).sqrt();
    let len = shape.iter().product();
    let data = (0..len).map(|_| rng.random_range(-bound..bound)).collect();
    params.push(Param {
        name,
        shape,
        data,
        decay,
    });
    params.len() - 1
}

/// Appends `{prefix}.weight` (ones) and `{prefix}.bias` (zeros) of a norm over `c` channels of
/// `h × w` planes; `None` for `none`.
pub(crate) fn norm_params(
    params: &mut Vec<Param>,
    spec: Option<Norm>,
    prefix: &str,
    c: usize,
    h: usize,
    w: usize,
) -> Option<(usize, usize)> {
    let at = Nchw::new(1, c, h, w);
    let al = spec.map_or(0, |n| n.affine_len(at));
    let shape = spec.map_or(vec![], |n| n.affine_shape(at));
    (al > 0).then(|| {
        params.push(Param {
            name: format!("{prefix}.weight"),
            shape: shape.clone(),
            data: vec![1.0; al],
            decay: false,
        });
        params.push(Param {
            name: format!("{prefix}.bias"),
            shape,
            data: vec![0.0; al],
            decay: false,
        });
        (params.len() - 2, params.len() - 1)
    })
}

/// Appends `fc.weight` `[10, c]` and `fc.bias`.
pub(crate) fn fc_params(rng: &mut ChaCha8Rng, params: &mut Vec<Param>, c: usize) -> (usize, usize) {
    let w = uniform(
        rng,
        params,
        "fc.weight".into(),
        vec![data::NUM_CLASSES, c],
        c,
        true,
    );
    let b = uniform(
        rng,
        params,
        "fc.bias".into(),
        vec![data::NUM_CLASSES],
        c,
        false,
    );
    (w, b)
}

/// What every norm layer of a forward pass shares: the norm, the mode, the worker split and
/// the running statistics.
pub(crate) struct NormCtx<'a> {
    mode: Mode,
    workers: usize,
    running_from: RunningFrom,
    layers: &'a mut [NormLayer],
    pool: &'a BufferPool<f32>,
    index_pool: &'a BufferPool<u8>,
}

impl NormCtx<'_> {
    /// The buffers of the ops.
    pub(crate) fn pool(&self) -> &BufferPool<f32> {
        self.pool
    }

    /// Norm layer `layer` (its index among the norm layers, which is its running statistics'
    /// index) on `x`, then `post`. A train-mode BatchNorm with `workers > 1` runs on each share
    /// of the batch on its own — its statistics are the share's — and the shares are joined
    /// again; worker 0's share (or every share, in turn) updates the running statistics.
    pub(crate) fn norm<T: Tape<f32, Cpu> + Merge<T>>(
        &mut self,
        x: Tensor<Shape4, f32, Cpu, T>,
        affine: Option<AffineTensors<T>>,
        layer: Option<usize>,
        post: Post,
    ) -> Result<Tensor<Shape4, f32, Cpu, T>, TrainError> {
        let pools = (self.pool, self.index_pool);
        let (mode, workers) = (self.mode, self.workers);
        let split = mode == Mode::Train && workers > 1;
        let layer = match layer.and_then(|l| self.layers.get_mut(l)) {
            Some(layer) if split && split_matters(layer.norm().kind()) => layer,
            layer => return norm::norm(x, affine, layer, mode, post, pools),
        };
        // Shares other than worker 0's update a throw-away copy (unless every share counts).
        let mut scratch = layer.clone();
        let parts = shares::split_batch(x, self.workers, self.pool)?;
        let affine = affine.map(|(g, b)| {
            let (g, tg) = g.split_tape();
            let (b, tb) = b.split_tape();
            (g, b, Some(tg.merge(tb)))
        });
        let mut affine = affine;
        let mut outs = Vec::with_capacity(parts.len());
        for (i, part) in parts.into_iter().enumerate() {
            // Clones keep the parameter's id, so every share's dγ, dβ add up in its gradient.
            let aff = affine.as_mut().map(|(g, b, t)| {
                (
                    g.clone().put_tape(t.take().unwrap_or_default()),
                    b.clone().put_tape(T::default()),
                )
            });
            let l = if i == 0 || self.running_from == RunningFrom::Every {
                &mut *layer
            } else {
                &mut scratch
            };
            outs.push(norm::norm(part, aff, Some(l), Mode::Train, post, pools)?);
        }
        shares::concat_batch(outs, self.pool)
    }
}

/// Whether a norm's train-mode output depends on how the batch is split over workers: the
/// descriptor's [`NormKind::mixes_samples`] (BatchNorm, BatchRenorm).
pub fn split_matters(kind: NormKind) -> bool {
    kind.mixes_samples()
}
