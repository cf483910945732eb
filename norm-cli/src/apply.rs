//! `norm-cli apply`: one normalisation layer, forward and optionally backward, on `.npy` files,
//! with PyTorch's semantics (the kernels of `norm-kernels`).
//!
//! File contract (all float32, C order, `'<f4'`): `y.npy` always; with `--grad-output`, `dx.npy`
//! and, with an affine, `dweight.npy` and `dbias.npy`; a norm with running statistics (BatchNorm)
//! in train mode also `running_mean.npy` and `running_var.npy` after this one step.
//!
//! Everything norm-specific (settings, affine shape, running statistics, eval mode) comes from
//! the kernels' descriptor [`Norm`].

use std::fs;
use std::path::Path;

use anyhow::{Context, Result, bail};
use norm_kernels::{
    Affine, AffineGrads, Backward, Forward, Grads, Mode, Nchw, Norm, Parallelism, RunningStats,
};

use crate::cli::ApplyArgs;
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
    let norm = settings(a)?;
    let running_note = || {
        let with: Vec<&str> = norm_kernels::NormKind::ALL
            .iter()
            .filter(|&&k| apply_norm(k, a, true).is_ok_and(|n| n.tracks_running()))
            .map(|k| k.name())
            .collect();
        with.join(", ")
    };
    if a.eval && !norm.tracks_running() {
        bail!(
            "--eval applies to norms with running statistics ({}); {} has none here",
            running_note(),
            a.norm
        );
    }
    if a.running_mean.is_some() && !norm.tracks_running() {
        bail!(
            "--running-mean/--running-var apply to norms with running statistics ({})",
            running_note()
        );
    }
    if let Err(e) = norm.validate(shape) {
        bail!("the settings do not fit {}: {e}", a.input.display());
    }
    let param_shape = norm.affine_shape(shape);
    let param_what = if param_shape.len() > 1 {
        format!(
            "{}'s affine is per element, [C, H, W] of the input",
            a.norm.label()
        )
    } else {
        "one value per channel of the input".to_owned()
    };
    let affine = match (&a.weight, &a.bias) {
        (Some(wp), Some(bp)) => {
            let wa = read_checked(wp)?;
            expect_shape(wp, &wa, &param_shape, &param_what)?;
            let ba = read_checked(bp)?;
            expect_shape(bp, &ba, &param_shape, &param_what)?;
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

/// The descriptor of `kind` with the command's settings; `affine` as the files say.
fn apply_norm(kind: norm_kernels::NormKind, a: &ApplyArgs, affine: bool) -> Result<Norm> {
    let mut norm = Norm::new(kind);
    let mut set = |key: &str, value: String, flag: &str| -> Result<()> {
        if norm.keys().contains(&key) {
            norm.set(key, &value)
                .map_err(|e| anyhow::anyhow!("{flag}: {e}"))?;
        }
        Ok(())
    };
    set("eps", a.eps.to_string(), "--eps")?;
    set("groups", a.groups.to_string(), "--groups")?;
    set("momentum", a.momentum.to_string(), "--momentum")?;
    set("affine", affine.to_string(), "--weight")?;
    // The norms whose statistics mix samples track running statistics here, as in training.
    if kind.mixes_samples() {
        set("track_running_stats", "true".into(), "--norm")?;
    }
    Ok(norm)
}

fn settings(a: &ApplyArgs) -> Result<Norm> {
    apply_norm(a.norm, a, a.weight.is_some())
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
    let norm = settings(a)?;
    let par = Parallelism::Rayon;
    let dims = vec![shape.n, shape.c, shape.h, shape.w];
    let mode = if a.eval { Mode::Eval } else { Mode::Train };
    let plen = norm.affine_len(shape);
    let pshape = norm.affine_shape(shape);
    let mut y = vec![0.0f32; shape.len()];
    let mut out: Outputs = Vec::new();
    let mut saved = vec![0.0f32; norm.saved_len(shape, mode)];
    let (mut rm, mut rv) = running
        .clone()
        .unwrap_or_else(|| (vec![0.0; shape.c], vec![1.0; shape.c]));
    let mut tracked = 0u64;
    let running = norm.tracks_running().then(|| RunningStats {
        mean: &mut rm,
        var: &mut rv,
        num_batches_tracked: &mut tracked,
    });
    let fwd = Forward {
        shape,
        x: &x,
        affine: affine.as_ref().map(|(g, b)| Affine { gamma: g, beta: b }),
        running,
        y: &mut y,
        saved: &mut saved,
    };
    norm.forward(mode, fwd, par)?;
    if norm.tracks_running() && mode == Mode::Train {
        out.push(("running_mean", vec![shape.c], rm));
        out.push(("running_var", vec![shape.c], rv));
    }
    out.insert(0, ("y", dims.clone(), y));
    if let Some(dy) = &dy {
        let mut dx = vec![0.0f32; shape.len()];
        let (mut dgamma, mut dbeta) = (vec![0.0f32; plen], vec![0.0f32; plen]);
        let bwd = Backward {
            shape,
            x: &x,
            dy,
            saved: &saved,
            gamma: affine.as_ref().map(|(g, _)| g.as_slice()),
            grads: Grads {
                dx: &mut dx,
                affine: (plen > 0).then_some(AffineGrads {
                    dgamma: &mut dgamma,
                    dbeta: &mut dbeta,
                }),
            },
        };
        norm.backward(mode, bwd, par)?;
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
