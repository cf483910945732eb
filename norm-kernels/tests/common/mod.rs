//! Loading the PyTorch reference cases of `../shared/fixtures/pytorch` (see its README.md); the
//! helpers the kernel tests share are in the submodules.
#![allow(dead_code)]

use std::path::PathBuf;

pub mod check;
pub mod described;
pub mod running;
pub mod sample;

/// The fixtures folder: `$NORMLAB_FIXTURES`, else `shared/fixtures/pytorch` beside the repository.
pub fn fixtures_dir() -> PathBuf {
    if let Ok(p) = std::env::var("NORMLAB_FIXTURES") {
        return PathBuf::from(p);
    }
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/fixtures/pytorch")
}

/// One case of `manifest.json`.
#[derive(Debug, Clone)]
pub struct Case {
    pub name: String,
    pub norm: String,
    pub shape: [usize; 4],
    pub eps: f32,
    pub momentum: Option<f32>,
    pub groups: Option<usize>,
    /// `affine` from the manifest; when absent, whether weight.npy exists.
    pub affine: bool,
    dir: PathBuf,
}

impl Case {
    /// `name.npy` of this case as (shape, data); `None` if the file does not exist.
    pub fn try_load(&self, name: &str) -> Option<(Vec<usize>, Vec<f32>)> {
        let path = self.dir.join(format!("{name}.npy"));
        if !path.exists() {
            return None;
        }
        let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let npy =
            npyz::NpyFile::new(&bytes[..]).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let shape = npy.shape().iter().map(|&d| d as usize).collect();
        let data = npy
            .into_vec::<f32>()
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        Some((shape, data))
    }

    /// `name.npy` of this case; panics naming the file if it is missing.
    pub fn load(&self, name: &str) -> Vec<f32> {
        self.try_load(name)
            .unwrap_or_else(|| panic!("fixture {}/{name}.npy is missing", self.name))
            .1
    }
}

/// Every case in the manifest, optionally only those of one norm (`batch`, `layer`, ...).
pub fn cases(norm: Option<&str>) -> Vec<Case> {
    let dir = fixtures_dir();
    let path = dir.join("manifest.json");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {} ({e}); set NORMLAB_FIXTURES", path.display()));
    let v: serde_json::Value = serde_json::from_str(&text).expect("manifest.json is not JSON");
    let mut out = Vec::new();
    for c in v["cases"].as_array().expect("manifest has no cases") {
        let name = c["name"].as_str().unwrap().to_string();
        let case_dir = dir.join(&name);
        let shape: Vec<usize> = c["shape"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d.as_u64().unwrap() as usize)
            .collect();
        let case = Case {
            norm: c["norm"].as_str().unwrap().to_string(),
            shape: shape.try_into().expect("shape is not 4-D"),
            eps: c["eps"].as_f64().unwrap() as f32,
            momentum: c.get("momentum").and_then(|m| m.as_f64()).map(|m| m as f32),
            groups: c.get("groups").and_then(|g| g.as_u64()).map(|g| g as usize),
            affine: c
                .get("affine")
                .and_then(|a| a.as_bool())
                .unwrap_or_else(|| case_dir.join("weight.npy").exists()),
            dir: case_dir,
            name,
        };
        if norm.is_none_or(|n| n == case.norm) {
            out.push(case);
        }
    }
    assert!(
        !out.is_empty(),
        "no fixture cases for {norm:?} in {}",
        path.display()
    );
    out
}

/// Max over i of |got - want| / max(1, |want|): the "1e-4 absolute or relative" criterion.
pub fn max_err(got: &[f32], want: &[f32]) -> f32 {
    assert_eq!(got.len(), want.len(), "length mismatch");
    got.iter()
        .zip(want)
        .map(|(&g, &w)| (g - w).abs() / w.abs().max(1.0))
        .fold(0.0, f32::max)
}
