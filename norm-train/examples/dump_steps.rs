//! Writes what `tools/torch_twin.py --check-steps DIR` compares against PyTorch over many
//! training steps rather than one: a starting model (`start.safetensors`), the augmented,
//! normalised batches of `steps` SGD steps on the default synthetic set (`x.bin`,
//! `labels.bin`), the learning rate of each (`meta.json`) and the model after some of them
//! (`after_K.safetensors`: weights and running statistics), and every step's gradients
//! (`grads.bin`, f32, step by step in parameter order). With `lr` 0 the weights stay put, so
//! the gradients of many batches at one point of training can be compared.
//!
//! `cargo run --release -p norm-train --example dump_steps -- DIR [arch] [norm] [workers]
//! [batch] [steps] [lr] [START.safetensors|fresh[:SEED]] [eval_every] [stream_seed] [warmup]
//! [schedule]`
//! (defaults: resnet8 batch 16 32 156 0.1 fresh 0 1 0; a fresh model from seed 7, or SEED, unless
//! START is given, e.g. a trained cell's model from `sweep --save-models`; `eval_every` K > 0
//! evaluates on the test set after every K steps; `stream_seed` seeds the batch order and
//! augmentation, `train:S` as `norm-cli train --seed S` does). The learning rate is `lr`, after a linear warm-up over the first `warmup` steps
//! as training's (`lr·(t+1)/warmup`), held (`schedule` step, the default) or falling as
//! training's cosine to 0 at the last step (`cosine`); SGD momentum 0.9, weight decay 5e-4. With
//! `lr` > 0 `grads.bin` is left empty (only the lr 0 comparison reads it).
//!
//! Options after the positional arguments, for runs cut into segments (hand-overs along a long
//! run): `offset=K` starts at step K of the stream and of the schedule (the stream's first K
//! batches are drawn and skipped, so step K's batch is the uncut run's), `total=T` makes the
//! schedule's last step T (default `offset + steps`), and `save=a,b,...` saves the model after
//! those steps of the whole run (default 1, 10, 50 and the last; names are `after_K` in steps of
//! the whole run).

use norm_train::{Arch, Model, ModelConfig, NormChoice, RunningFrom, Sgd, data};
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// `a` as an option `offset=K`, `total=T` or `save=a,b`; other arguments may hold '=' too (a
/// norm's settings, a path).
fn option(a: &str) -> Option<(&str, &str)> {
    a.split_once('=')
        .filter(|(k, _)| matches!(*k, "offset" | "total" | "save"))
}

fn main() -> Result<(), BoxError> {
    let all: Vec<String> = std::env::args().skip(1).collect();
    let (opts, args): (Vec<String>, Vec<String>) =
        all.into_iter().partition(|a| option(a).is_some());
    let (mut offset, mut total, mut save) = (0usize, None, None);
    for (k, v) in opts.iter().filter_map(|o| option(o)) {
        match k {
            "offset" => offset = v.parse()?,
            "total" => total = Some(v.parse::<usize>()?),
            _ => {
                save = Some(
                    v.split(',')
                        .map(str::parse)
                        .collect::<Result<Vec<usize>, _>>()?,
                )
            }
        }
    }
    let dir = std::path::PathBuf::from(args.first().ok_or(
        "usage: dump_steps DIR [arch] [norm] [workers] [batch] [steps] [lr] [START.safetensors|fresh[:SEED]] [eval_every] [stream_seed] [warmup] [step|cosine]",
    )?);
    let arg = |i: usize, default: &str| args.get(i).map_or(default.to_owned(), String::clone);
    let arch: Arch = arg(1, "resnet8").parse()?;
    let norm: NormChoice = arg(2, "batch").parse()?;
    let workers: usize = arg(3, "16").parse()?;
    let batch: usize = arg(4, "32").parse()?;
    let steps: usize = arg(5, "156").parse()?;
    let lr: f32 = arg(6, "0.1").parse()?;
    // Evaluate on the test set after every `eval_every` steps, as the training loop does after
    // each epoch (0: never), to check that evaluation leaves training untouched.
    let eval_every: usize = arg(8, "0").parse()?;
    let stream = arg(9, "1");
    let (stream_seed, as_train): (u64, bool) = match stream.strip_prefix("train:") {
        Some(s) => (s.parse()?, true),
        None => (stream.parse()?, false),
    };
    let warmup: usize = arg(10, "0").parse()?;
    let cosine = match arg(11, "step").as_str() {
        "step" => false,
        "cosine" => true,
        other => return Err(format!("schedule {other:?}: expected step or cosine").into()),
    };
    if steps == 0 || batch == 0 || workers == 0 || !batch.is_multiple_of(workers) {
        return Err("steps and batch must be at least 1 and workers must divide batch".into());
    }
    let total = total.unwrap_or(offset + steps);
    if total < offset + steps {
        return Err(format!("total={total} ends before the last step {}", offset + steps).into());
    }
    std::fs::create_dir_all(&dir)?;
    let start = arg(7, "fresh");
    let mut model = match start.strip_prefix("fresh") {
        Some(seed) => Model::new(
            &ModelConfig {
                arch,
                ..ModelConfig::new([16, 32, 64], norm, 8, 1e-5)
            },
            seed.strip_prefix(':').map_or(Ok(7), str::parse)?,
        )?,
        None => norm_train::checkpoint::load(std::path::Path::new(&start))?.model,
    };
    let split = data::synthetic(0, 5000, 1000);
    let normalizer = data::Normalizer::from_dataset(&split.train);
    let meta = norm_train::checkpoint::CheckpointMeta {
        normalizer,
        data: None,
    };
    norm_train::checkpoint::save(&dir.join("start.safetensors"), &model, &meta)?;
    model.set_workers(workers, RunningFrom::Worker0)?;
    model.train_mode();
    let mut sgd = Sgd::new(0.9, 5e-4);
    let mut rng = ChaCha8Rng::seed_from_u64(stream_seed);
    if as_train {
        rng.set_stream(1);
    }
    let mut order: Vec<usize> = (0..split.train.len()).collect();
    let per_epoch = split.train.len() / batch;
    let img = 3 * 32 * 32;
    let (mut xs, mut ls) = (Vec::with_capacity(steps * batch * img), Vec::new());
    let (mut xb, mut lb) = (vec![0.0f32; batch * img], vec![0usize; batch]);
    let saved_at = save.unwrap_or(vec![offset + 1, offset + 10, offset + 50, offset + steps]);
    // Held: a total of 4·total, so the step schedule never reaches its first drop.
    let step_lr = |t: usize| match cosine {
        true => norm_train::learning_rate(norm_train::Schedule::Cosine, lr, t, warmup, total),
        false => norm_train::learning_rate(norm_train::Schedule::Step, lr, t, warmup, 4 * total),
    };
    let mut losses = Vec::with_capacity(steps);
    let mut gs: Vec<u8> = Vec::new();
    for t in 0..offset + steps {
        if t % per_epoch == 0 {
            order.shuffle(&mut rng);
        }
        let s = t % per_epoch;
        let idx = &order[s * batch..(s + 1) * batch];
        data::fill_batch(
            &split.train,
            idx,
            &normalizer,
            &data::Augment::CIFAR,
            &mut rng,
            &mut xb,
            &mut lb,
        );
        // The stream's first `offset` batches are drawn as the uncut run draws them, then dropped.
        if t < offset {
            continue;
        }
        let (loss, _, grads) = model.loss_and_grads(&xb, &lb)?;
        // Each step's gradients as computed, not as recovered from the update.
        if lr == 0.0 {
            gs.extend(grads.iter().flatten().flat_map(|v| v.to_le_bytes()));
        }
        sgd.step(&mut model, &grads, step_lr(t));
        if eval_every > 0 && (t + 1) % eval_every == 0 {
            model.evaluate(&split.test, &normalizer)?;
        }
        losses.push(loss);
        xs.extend_from_slice(&xb);
        ls.extend(lb.iter().map(|&l| l as u64));
        if saved_at.contains(&(t + 1)) {
            let path = dir.join(format!("after_{}.safetensors", t + 1));
            norm_train::checkpoint::save(&path, &model, &meta)?;
        }
    }
    let bytes = |v: &[f32]| v.iter().flat_map(|a| a.to_le_bytes()).collect::<Vec<u8>>();
    std::fs::write(dir.join("x.bin"), bytes(&xs))?;
    std::fs::write(dir.join("grads.bin"), &gs)?;
    std::fs::write(
        dir.join("labels.bin"),
        ls.iter().flat_map(|l| l.to_le_bytes()).collect::<Vec<u8>>(),
    )?;
    let names: Vec<&str> = model.params().iter().map(|p| p.name.as_str()).collect();
    let meta = serde_json::json!({
        "params": names, "batch": batch, "steps": steps, "lr": lr, "workers": workers, "momentum": 0.9,
        "weight_decay": 5e-4, "running_from": "worker0", "saved_at": saved_at, "losses": losses,
        "stream_seed": stream_seed, "warmup": warmup, "offset": offset, "total": total,
        "schedule": if cosine { "cosine" } else { "step" },
    });
    std::fs::write(dir.join("meta.json"), meta.to_string())?;
    println!(
        "wrote {} ({steps} steps, last loss {})",
        dir.display(),
        losses[steps - 1]
    );
    Ok(())
}
