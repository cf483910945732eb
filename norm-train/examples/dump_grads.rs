//! Writes what `tools/torch_twin.py --check-grads DIR` compares against PyTorch: a freshly
//! initialised model (`model.ckpt`), a random normalised batch (`x.bin`, `labels.bin`), the
//! train-mode loss and every parameter's gradient (`grads.bin`, `meta.json`).
//!
//! `cargo run --release -p norm-train --example dump_grads -- DIR [arch] [norm] [workers] [n] [width]`
//! (defaults: resnet8 batch 1 8 1).

use std::io::Write;

use norm_train::{Arch, Model, ModelConfig, NormChoice, RunningFrom};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

fn main() -> Result<(), BoxError> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let dir = std::path::PathBuf::from(
        args.first()
            .ok_or("usage: dump_grads DIR [arch] [norm] [workers] [n] [width]")?,
    );
    let arch: Arch = args.get(1).map_or("resnet8", String::as_str).parse()?;
    let norm: NormChoice = args.get(2).map_or("batch", String::as_str).parse()?;
    let workers: usize = args.get(3).map_or("1", String::as_str).parse()?;
    let n: usize = args.get(4).map_or("8", String::as_str).parse()?;
    let width: f32 = args.get(5).map_or("1", String::as_str).parse()?;
    std::fs::create_dir_all(&dir)?;
    let cfg = ModelConfig {
        arch,
        width: if arch == Arch::Plain { 1.0 } else { width },
        ..ModelConfig::new([16, 32, 64], norm, 8, 1e-5)
    };
    let mut model = Model::new(&cfg, 7)?;
    let meta = norm_train::checkpoint::CheckpointMeta {
        normalizer: norm_train::data::Normalizer {
            mean: [0.0; 3],
            std: [1.0; 3],
        },
        data: None,
    };
    norm_train::checkpoint::save(&dir.join("model.safetensors"), &model, &meta)?;
    model.set_workers(workers, RunningFrom::Worker0)?;
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let x: Vec<f32> = (0..n * 3 * 32 * 32)
        .map(|_| rng.random_range(-2.0..2.0))
        .collect();
    let labels: Vec<usize> = (0..n).map(|_| rng.random_range(0..10)).collect();
    let (loss, _, grads) = model.loss_and_grads(&x, &labels)?;
    // The running statistics after this one train-mode step, for the twin to compare.
    norm_train::checkpoint::save(&dir.join("model_after.safetensors"), &model, &meta)?;
    let f32s = |v: &[f32]| v.iter().flat_map(|a| a.to_le_bytes()).collect::<Vec<u8>>();
    std::fs::write(dir.join("x.bin"), f32s(&x))?;
    std::fs::write(
        dir.join("labels.bin"),
        labels
            .iter()
            .flat_map(|&l| (l as u64).to_le_bytes())
            .collect::<Vec<u8>>(),
    )?;
    let mut g = std::fs::File::create(dir.join("grads.bin"))?;
    for gr in &grads {
        g.write_all(&f32s(gr))?;
    }
    let names: Vec<&str> = model.params().iter().map(|p| p.name.as_str()).collect();
    let meta = serde_json::json!({
        "n": n, "workers": workers, "running_from": "worker0", "loss": loss, "params": names,
    });
    std::fs::write(dir.join("meta.json"), meta.to_string())?;
    println!("wrote {} (loss {loss})", dir.display());
    Ok(())
}
