//! `norm-cli apply`: one normalisation layer, forward and optionally backward, on `.npy` files,
//! with PyTorch's semantics (the kernels of `norm-kernels`).
//!
//! File contract (all float32, C order, `'<f4'`): `y.npy` always; with `--grad-output`, `dx.npy`
//! and, with an affine, `dweight.npy` and `dbias.npy`; BatchNorm in train mode also
//! `running_mean.npy` and `running_var.npy` after this one step.

use std::fs;
use std::path::Path;

use anyhow::{Context, Result, bail};
use norm_kernels::{Affine, AffineGrads, Momentum, Nchw, Parallelism, RunningStats};

use crate::cli::{ApplyArgs, ApplyNorm};
use crate::npy::{self, Array, shape_str};

/// Inputs read and checked.
struct Inputs {
    shape: Nchw,
    x: Vec<f32>,
    /// `(gamma, beta)`.
    affine: Option<(Vec<f32>, Vec<f32>)>,
    dy: Option<Vec<f32>>,
    /// `(running_mean, running_var)`.
    running: Option<(Vec<f32>, Vec<f32>)>,
}

/// Outputs to write, by file stem.
type Outputs = Vec<(&'static str, Vec<usize>, Vec<f32>)>;

fn read_checked(path: &Path) -> Result<Array> {
    let a = npy::read_f32(path)?;
    npy::check_finite(path, &a)?;
    Ok(a)
}

fn expect_shape(path: &Path, a: &Array, want: &[usize], what: &str) -> Result<()> {
    if a.shape != want {
        bail!(
            "{} has shape {}, expected {} ({what})",
            path.display(),
            shape_str(&a.shape),
            shape_str(want)
        );
    }
    Ok(())
}

fn read_inputs(a: &ApplyArgs) -> Result<Inputs> {
    let xa = read_checked(&a.input)?;
    let [n, c, h, w] = xa.shape[..] else {
        bail!(
            "{} has shape {}, expected a 4-D NCHW array",
            a.input.display(),
            shape_str(&xa.shape)
        );
    };
    let shape = Nchw::new(n, c, h, w);
    if shape.is_empty() {
        bail!(
            "{} has shape {}: no dimension may be 0",
            a.input.display(),
            shape_str(&xa.shape)
        );
    }
    let is_batch = a.norm == ApplyNorm::Batch;
    if a.eval && !is_batch {
        bail!(
            "--eval applies to --norm batch only (the other norms have no running statistics here)"
        );
    }
    if a.running_mean.is_some() && !is_batch {
        bail!("--running-mean/--running-var apply to --norm batch only");
    }
    if a.norm == ApplyNorm::Group && (a.groups == 0 || c % a.groups != 0) {
        bail!(
            "--groups {} does not divide the {c} channels of {} (GroupNorm needs C % G == 0)",
            a.groups,
            a.input.display()
        );
    }
    let param_shape = if a.norm == ApplyNorm::Layer {
        vec![c, h, w]
    } else {
        vec![c]
    };
    let param_what = if a.norm == ApplyNorm::Layer {
        "LayerNorm's affine is per element, [C, H, W] of the input"
    } else {
        "one value per channel of the input"
    };
    let affine = match (&a.weight, &a.bias) {
        (Some(wp), Some(bp)) => {
            let wa = read_checked(wp)?;
            expect_shape(wp, &wa, &param_shape, param_what)?;
            let ba = read_checked(bp)?;
            expect_shape(bp, &ba, &param_shape, param_what)?;
            Some((wa.data, ba.data))
        }
        (None, None) => None,
        _ => bail!("--weight and --bias go together"),
    };
    let dy = match &a.grad_output {
        Some(p) => {
            let d = read_checked(p)?;
            expect_shape(p, &d, &xa.shape, "the shape of the input")?;
            Some(d.data)
        }
        None => None,
    };
    let running = match (&a.running_mean, &a.running_var) {
        (Some(mp), Some(vp)) => {
            let m = read_checked(mp)?;
            expect_shape(mp, &m, &[c], "one value per channel of the input")?;
            let v = read_checked(vp)?;
            expect_shape(vp, &v, &[c], "one value per channel of the input")?;
            if let Some(i) = v.data.iter().position(|&x| x < 0.0) {
                bail!("{} has a negative variance at index {i}", vp.display());
            }
            Some((m.data, v.data))
        }
        (None, None) => None,
        _ => bail!("--running-mean and --running-var go together"),
    };
    Ok(Inputs {
        shape,
        x: xa.data,
        affine,
        dy,
        running,
    })
}

/// Gradient buffers of the affine, or `None` without affine (empty buffers).
fn grads<'a>(dgamma: &'a mut [f32], dbeta: &'a mut [f32]) -> Option<AffineGrads<'a>> {
    (!dgamma.is_empty()).then_some(AffineGrads { dgamma, dbeta })
}

/// Runs the layer and returns the arrays to write.
fn compute(a: &ApplyArgs, inp: Inputs) -> Result<Outputs> {
    let Inputs {
        shape,
        x,
        affine,
        dy,
        running,
    } = inp;
    let par = Parallelism::Rayon;
    let dims = vec![shape.n, shape.c, shape.h, shape.w];
    let aff = affine.as_ref().map(|(g, b)| Affine { gamma: g, beta: b });
    let gamma = affine.as_ref().map(|(g, _)| g.as_slice());
    let plen = affine.as_ref().map_or(0, |(g, _)| g.len());
    let pshape = if a.norm == ApplyNorm::Layer {
        vec![shape.c, shape.h, shape.w]
    } else {
        vec![shape.c]
    };
    let mut y = vec![0.0f32; shape.len()];
    let mut out: Outputs = Vec::new();
    let mut dx = vec![0.0f32; if dy.is_some() { shape.len() } else { 0 }];
    let (mut dgamma, mut dbeta) = (vec![0.0f32; plen], vec![0.0f32; plen]);
    // Per-group statistics: [C] for BatchNorm, [N·C] InstanceNorm, [N] LayerNorm, [N·G] GroupNorm.
    let stats_len = match a.norm {
        ApplyNorm::Batch => shape.c,
        ApplyNorm::Instance => shape.n * shape.c,
        ApplyNorm::Layer => shape.n,
        ApplyNorm::Group => shape.n * a.groups,
    };
    let (mut mean, mut rstd) = (vec![0.0f32; stats_len], vec![0.0f32; stats_len]);
    match a.norm {
        ApplyNorm::Batch if a.eval => {
            let (rm, rv) = running
                .as_ref()
                .context("--eval needs --running-mean and --running-var")?;
            norm_kernels::batch_norm_forward_eval(shape, &x, rm, rv, aff, a.eps, &mut y, par)?;
            if let Some(dy) = &dy {
                let g = grads(&mut dgamma, &mut dbeta);
                norm_kernels::batch_norm_backward_eval(
                    shape, &x, dy, rm, rv, gamma, a.eps, &mut dx, g, par,
                )?;
            }
        }
        ApplyNorm::Batch => {
            let (mut rm, mut rv) = running
                .clone()
                .unwrap_or_else(|| (vec![0.0; shape.c], vec![1.0; shape.c]));
            let mut tracked = 0u64;
            let rs = RunningStats {
                mean: &mut rm,
                var: &mut rv,
                num_batches_tracked: &mut tracked,
                momentum: Momentum::Exponential(a.momentum),
            };
            norm_kernels::batch_norm_forward_train(
                shape,
                &x,
                aff,
                a.eps,
                Some(rs),
                &mut y,
                &mut mean,
                &mut rstd,
                par,
            )?;
            if let Some(dy) = &dy {
                let g = grads(&mut dgamma, &mut dbeta);
                norm_kernels::batch_norm_backward_train(
                    shape, &x, dy, &mean, &rstd, gamma, &mut dx, g, par,
                )?;
            }
            out.push(("running_mean", vec![shape.c], rm));
            out.push(("running_var", vec![shape.c], rv));
        }
        ApplyNorm::Instance => {
            norm_kernels::instance_norm_forward_train(
                shape, &x, aff, a.eps, None, &mut y, &mut mean, &mut rstd, par,
            )?;
            if let Some(dy) = &dy {
                let g = grads(&mut dgamma, &mut dbeta);
                norm_kernels::instance_norm_backward_train(
                    shape, &x, dy, &mean, &rstd, gamma, &mut dx, g, par,
                )?;
            }
        }
        ApplyNorm::Layer => {
            norm_kernels::layer_norm_forward(
                shape, &x, aff, a.eps, &mut y, &mut mean, &mut rstd, par,
            )?;
            if let Some(dy) = &dy {
                let g = grads(&mut dgamma, &mut dbeta);
                norm_kernels::layer_norm_backward(
                    shape, &x, dy, &mean, &rstd, gamma, &mut dx, g, par,
                )?;
            }
        }
        ApplyNorm::Group => {
            norm_kernels::group_norm_forward(
                shape, a.groups, &x, aff, a.eps, &mut y, &mut mean, &mut rstd, par,
            )?;
            if let Some(dy) = &dy {
                let g = grads(&mut dgamma, &mut dbeta);
                norm_kernels::group_norm_backward(
                    shape, a.groups, &x, dy, &mean, &rstd, gamma, &mut dx, g, par,
                )?;
            }
        }
    }
    out.insert(0, ("y", dims.clone(), y));
    if dy.is_some() {
        out.push(("dx", dims, dx));
        if plen > 0 {
            out.push(("dweight", pshape.clone(), dgamma));
            out.push(("dbias", pshape, dbeta));
        }
    }
    Ok(out)
}

/// Runs the command; returns the files written.
pub fn run(a: &ApplyArgs) -> Result<Vec<std::path::PathBuf>> {
    if !(a.eps.is_finite() && a.eps >= 0.0) {
        bail!("--eps {} must be finite and non-negative", a.eps);
    }
    if !(0.0..=1.0).contains(&a.momentum) {
        bail!("--momentum {} must be in [0, 1]", a.momentum);
    }
    let inputs = read_inputs(a)?;
    let outputs = compute(a, inputs)?;
    fs::create_dir_all(&a.out_dir)
        .with_context(|| format!("cannot create output folder {}", a.out_dir.display()))?;
    let mut written = Vec::new();
    for (stem, shape, data) in outputs {
        let p = a.out_dir.join(format!("{stem}.npy"));
        npy::write_f32(&p, &shape, &data)?;
        written.push(p);
    }
    Ok(written)
}
