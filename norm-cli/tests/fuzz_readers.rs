//! Property tests of every reader of user files: random bytes, truncations and corrupted bytes
//! of a valid file fed to the npy reader, the CIFAR-10 reader, the checkpoint loader and the
//! `results.jsonl` reader. None may panic; every error is one line naming the file.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use proptest::prelude::*;

/// A file written once per test process into a folder that outlives it.
fn scratch() -> &'static Path {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| tempfile::tempdir().unwrap()).path()
}

fn fresh(name: &str) -> PathBuf {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static N: AtomicUsize = AtomicUsize::new(0);
    let d = scratch().join(format!("case{}", N.fetch_add(1, Ordering::Relaxed)));
    std::fs::create_dir_all(&d).unwrap();
    d.join(name)
}

/// Checks the shape of an error: one line, names `path`.
fn names_file(msg: &str, path: &Path) -> Result<(), TestCaseError> {
    prop_assert!(!msg.contains('\n'), "multi-line: {msg}");
    prop_assert!(
        msg.contains(&path.display().to_string()),
        "does not name {}: {msg}",
        path.display()
    );
    Ok(())
}

/// The three ways a file goes bad: replaced by noise, cut short, or bytes overwritten.
#[derive(Clone, Debug)]
enum Damage {
    Random(Vec<u8>),
    Truncate(prop::sample::Index),
    Corrupt(Vec<(prop::sample::Index, u8)>),
}

fn damage() -> impl Strategy<Value = Damage> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..400).prop_map(Damage::Random),
        any::<prop::sample::Index>().prop_map(Damage::Truncate),
        prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6)
            .prop_map(Damage::Corrupt),
    ]
}

/// The damaged bytes, and whether the result is sure to be invalid (noise and corrupted bytes
/// may by chance still form a valid file; a strict prefix never does for the formats that
/// record their length).
fn apply(good: &[u8], d: &Damage) -> (Vec<u8>, bool) {
    match d {
        Damage::Random(b) => (b.clone(), false),
        Damage::Truncate(i) => (good[..i.index(good.len())].to_vec(), true),
        Damage::Corrupt(edits) => {
            let mut b = good.to_vec();
            for (i, v) in edits {
                let i = i.index(b.len());
                b[i] = *v;
            }
            (b, false)
        }
    }
}

fn good_npy() -> &'static [u8] {
    static B: OnceLock<Vec<u8>> = OnceLock::new();
    B.get_or_init(|| {
        let p = scratch().join("good.npy");
        let data: Vec<f32> = (0..2 * 3 * 4 * 5).map(|i| i as f32 * 0.25).collect();
        norm_cli::npy::write_f32(&p, &[2, 3, 4, 5], &data).unwrap();
        std::fs::read(p).unwrap()
    })
}

fn good_checkpoint() -> &'static [u8] {
    static B: OnceLock<Vec<u8>> = OnceLock::new();
    B.get_or_init(|| {
        let p = scratch().join("good.safetensors");
        let batch = norm_train::NormChoice::Norm(norm_train::NormKind::Batch);
        let cfg = norm_train::ModelConfig::new([4, 8, 8], batch, 4, 1e-5);
        let model = norm_train::Model::new(&cfg, 3).unwrap();
        let meta = norm_train::checkpoint::CheckpointMeta {
            normalizer: norm_train::data::Normalizer {
                mean: [0.5, 0.4, 0.3],
                std: [0.25, 0.25, 0.2],
            },
            data: None,
        };
        norm_train::checkpoint::save(&p, &model, &meta).unwrap();
        std::fs::read(p).unwrap()
    })
}

fn good_results() -> &'static [u8] {
    static B: OnceLock<Vec<u8>> = OnceLock::new();
    B.get_or_init(|| {
        let mut text = String::new();
        for (i, norm) in ["batch", "group", "layer"].into_iter().enumerate() {
            text.push_str(&format!(
                r#"{{"norm":"{norm}","batch":{},"seed":0,"status":"ok","recipe":{{"epochs":1}},"test_acc_per_epoch":[0.5],"train_loss_per_epoch":[1.5],"final_test_acc":0.5,"images_per_sec":100.0,"seconds":1.0,"simd":"scalar","threads":1}}"#,
                2 << i
            ));
            text.push('\n');
        }
        text.into_bytes()
    })
}

fn cifar_record(label: u8) -> Vec<u8> {
    let mut r = vec![label];
    r.extend((0..norm_train::data::IMAGE_BYTES).map(|i| (i % 251) as u8));
    r
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn npy_reader(d in damage()) {
        let (bytes, must_fail) = apply(good_npy(), &d);
        let p = fresh("x.npy");
        std::fs::write(&p, &bytes).unwrap();
        match norm_cli::npy::read_f32(&p) {
            Ok(a) => {
                prop_assert!(!must_fail, "a truncated file was read: {:?}", a.shape);
                prop_assert_eq!(a.data.len(), a.shape.iter().product::<usize>());
            }
            Err(e) => names_file(&format!("{e:#}"), &p)?,
        }
    }

    #[test]
    fn cifar10_reader(d in damage(), which in 0..2usize) {
        let good: Vec<u8> = [cifar_record(3), cifar_record(9)].concat();
        let (bytes, _) = apply(&good, &d);
        let dir = fresh("cifar");
        std::fs::create_dir_all(&dir).unwrap();
        let (bad, other) = [("test_batch.bin", "data_batch_1.bin"), ("data_batch_1.bin", "test_batch.bin")][which];
        std::fs::write(dir.join(bad), &bytes).unwrap();
        std::fs::write(dir.join(other), &good).unwrap();
        match norm_train::data::load_cifar10(&dir) {
            // Only whole records with labels 0..=9 are accepted.
            Ok(s) => {
                prop_assert!(!bytes.is_empty() && bytes.len() % 3073 == 0);
                prop_assert!(bytes.chunks(3073).all(|r| r[0] <= 9));
                prop_assert_eq!(s.train.len() + s.test.len(), 2 + bytes.len() / 3073);
            }
            Err(e) => names_file(&e.to_string(), &dir.join(bad))?,
        }
    }

    #[test]
    fn checkpoint_loader(d in damage()) {
        let (bytes, must_fail) = apply(good_checkpoint(), &d);
        let p = fresh("m.safetensors");
        std::fs::write(&p, &bytes).unwrap();
        match norm_train::checkpoint::load(&p) {
            Ok(_) => prop_assert!(!must_fail && bytes.len() == good_checkpoint().len()),
            Err(e) => names_file(&e.to_string(), &p)?,
        }
    }

    #[test]
    fn results_reader(d in damage()) {
        let (bytes, _) = apply(good_results(), &d);
        let p = fresh("results.jsonl");
        std::fs::write(&p, &bytes).unwrap();
        match norm_cli::store::read_results(&p) {
            // A partial last line is not an error: it is reported and left out.
            Ok((rs, rep)) => {
                prop_assert!(rs.len() <= bytes.iter().filter(|&&b| b == b'\n').count());
                prop_assert!(rep.partial_tail <= bytes.len());
            }
            Err(e) => names_file(&format!("{e:#}"), &p)?,
        }
    }
}
