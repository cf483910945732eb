//! Writes normlab's random streams for one training cell, for `tools/torch_twin.py --stream DIR`
//! to train PyTorch's twin on them: the initial model of `seed` (`init.safetensors`) and, per
//! step, the images of the batch and their augmentation (`stream.bin`: per image, its index as
//! u16 LE, then the crop offsets dy, dx as i8 and the flip as u8), drawn exactly as
//! `norm_train::train` draws them (ChaCha8 stream 1 of `seed`: a shuffle per epoch, then per
//! image `Augment::draw`).
//!
//! `x0.bin` holds the first batch as the training loop fills it (normalised f32), to check
//! a reading of the stream against.
//!
//! `cargo run --release -p norm-train --example dump_stream -- DIR [seed] [arch] [batch]
//! [epochs] [train_size]` (defaults: 0 resnet8 32 60 5000; the CIFAR augmentation).

use norm_train::{Arch, Model, ModelConfig, NormChoice};
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

fn main() -> Result<(), BoxError> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let dir = std::path::PathBuf::from(
        args.first()
            .ok_or("usage: dump_stream DIR [seed] [arch] [batch] [epochs] [train_size]")?,
    );
    let arg = |i: usize, default: &str| args.get(i).map_or(default.to_owned(), String::clone);
    let seed: u64 = arg(1, "0").parse()?;
    let arch: Arch = arg(2, "resnet8").parse()?;
    let batch: usize = arg(3, "32").parse()?;
    let epochs: usize = arg(4, "60").parse()?;
    let train_size: usize = arg(5, "5000").parse()?;
    if batch == 0 || batch > train_size || train_size > usize::from(u16::MAX) {
        return Err("batch must be in 1..=train_size and train_size at most 65535".into());
    }
    std::fs::create_dir_all(&dir)?;
    let norm: NormChoice = "batch".parse()?;
    let cfg = ModelConfig {
        arch,
        ..ModelConfig::new([16, 32, 64], norm, 8, 1e-5)
    };
    let model = Model::new(&cfg, seed)?;
    let meta = norm_train::checkpoint::CheckpointMeta {
        normalizer: norm_train::data::Normalizer {
            mean: [0.0; 3],
            std: [1.0; 3],
        },
        data: None,
    };
    norm_train::checkpoint::save(&dir.join("init.safetensors"), &model, &meta)?;
    let aug = norm_train::data::Augment::CIFAR;
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(1);
    // The first batch as the training loop fills it, for the twin to check its reading against.
    {
        let split = norm_train::data::synthetic(0, train_size, 1000);
        let normalizer = norm_train::data::Normalizer::from_dataset(&split.train);
        let mut r = rng.clone();
        let mut order: Vec<usize> = (0..train_size).collect();
        order.shuffle(&mut r);
        let (mut x, mut l) = (vec![0.0f32; batch * 3 * 32 * 32], vec![0usize; batch]);
        norm_train::data::fill_batch(
            &split.train,
            &order[..batch],
            &normalizer,
            &aug,
            &mut r,
            &mut x,
            &mut l,
        );
        let bytes: Vec<u8> = x.iter().flat_map(|v| v.to_le_bytes()).collect();
        std::fs::write(dir.join("x0.bin"), bytes)?;
    }
    let mut order: Vec<usize> = (0..train_size).collect();
    let steps = train_size / batch;
    let mut out = Vec::with_capacity(epochs * steps * batch * 5);
    for _ in 0..epochs {
        order.shuffle(&mut rng);
        for &i in &order[..steps * batch] {
            let (dy, dx, flip) = aug.draw(&mut rng);
            out.extend_from_slice(&(i as u16).to_le_bytes());
            out.extend_from_slice(&[dy as i8 as u8, dx as i8 as u8, u8::from(flip)]);
        }
    }
    std::fs::write(dir.join("stream.bin"), &out)?;
    let meta = serde_json::json!({"seed": seed, "batch": batch, "epochs": epochs, "steps": steps,
        "train_size": train_size});
    std::fs::write(dir.join("meta.json"), meta.to_string())?;
    println!("wrote {} ({epochs} epochs of {steps} steps)", dir.display());
    Ok(())
}
