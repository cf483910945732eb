//! Tests of `norm_train::data`: the synthetic set (determinism, balance, difficulty), the CIFAR-10
//! binary format, normalisation and batch filling.

use std::fs;
use std::path::Path;

use norm_train::data::{
    Augment, CLASS_NAMES, DataError, Dataset, IMAGE_BYTES, IMAGE_SIZE, NUM_CLASSES, Normalizer,
    PLANE, Split, fill_batch, load_cifar10, synthetic, write_cifar10,
};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

fn pool(threads: usize) -> rayon::ThreadPool {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .unwrap()
}

// ---------------------------------------------------------------------------------------------
// Synthetic data set

#[test]
fn synthetic_is_deterministic_and_seed_dependent() {
    let a = synthetic(7, 200, 50);
    let b = synthetic(7, 200, 50);
    assert_eq!(a.train, b.train);
    assert_eq!(a.test, b.test);
    let c = synthetic(8, 200, 50);
    assert_ne!(a.train.images, c.train.images);
    assert_ne!(a.test.images, c.test.images);
    // Every image differs between the seeds, not only some.
    for i in 0..200 {
        assert_ne!(a.train.image(i), c.train.image(i), "image {i}");
    }
}

#[test]
fn synthetic_shapes_and_sizes() {
    let s = synthetic(1, 30, 11);
    assert_eq!(s.train.len(), 30);
    assert_eq!(s.test.len(), 11);
    assert_eq!(s.train.images.len(), 30 * IMAGE_BYTES);
    assert_eq!(s.test.images.len(), 11 * IMAGE_BYTES);
    assert!(s.train.labels.iter().all(|&l| (l as usize) < NUM_CLASSES));
    let empty = synthetic(1, 0, 0);
    assert!(empty.train.is_empty() && empty.test.is_empty());
    assert!(empty.train.images.is_empty());
    // Image i does not depend on the split size.
    let big = synthetic(1, 60, 20);
    assert_eq!(big.train.images[..30 * IMAGE_BYTES], s.train.images[..]);
    assert_eq!(big.test.images[..11 * IMAGE_BYTES], s.test.images[..]);
}

#[test]
fn train_and_test_are_different_images() {
    let s = synthetic(3, 300, 300);
    let train: std::collections::HashSet<&[u8]> = (0..300).map(|i| s.train.image(i)).collect();
    assert_eq!(train.len(), 300, "duplicate train images");
    for i in 0..300 {
        assert!(
            !train.contains(s.test.image(i)),
            "test image {i} is also a train image"
        );
        assert_ne!(s.train.image(i), s.test.image(i));
    }
}

#[test]
fn synthetic_is_independent_of_the_thread_count() {
    let one = pool(1).install(|| synthetic(11, 257, 63));
    let two = pool(2).install(|| synthetic(11, 257, 63));
    let three = pool(3).install(|| synthetic(11, 257, 63));
    assert_eq!(one.train, two.train);
    assert_eq!(one.test, two.test);
    assert_eq!(one.train, three.train);
}

#[test]
fn classes_are_balanced() {
    let s = synthetic(5, 1003, 200);
    let counts = s.train.class_counts();
    // Label i % 10: 1003 images give three classes 101 images and seven 100.
    assert_eq!(counts, [101, 101, 101, 100, 100, 100, 100, 100, 100, 100]);
    assert_eq!(s.test.class_counts(), [20; NUM_CLASSES]);
}

#[test]
fn pixel_statistics_are_plausible() {
    // Images use the whole range, every channel is spread out, and no class is a flat colour.
    let s = synthetic(2, 500, 0);
    let norm = Normalizer::from_dataset(&s.train);
    for c in 0..3 {
        assert!((0.3..0.7).contains(&norm.mean[c]), "mean {:?}", norm.mean);
        assert!((0.15..0.4).contains(&norm.std[c]), "std {:?}", norm.std);
    }
    for i in 0..500 {
        let img = s.train.image(i);
        let lo = *img.iter().min().unwrap();
        let hi = *img.iter().max().unwrap();
        assert!(hi - lo > 60, "image {i}: range {lo}..{hi}");
    }
}

#[test]
fn colour_alone_does_not_give_the_class_away() {
    // Mean colour of each image: the per-class averages of these must be close together
    // (colours are drawn from one distribution for all classes).
    let s = synthetic(4, 2000, 0);
    let mut class_mean = [[0.0f64; 3]; NUM_CLASSES];
    for i in 0..s.train.len() {
        let img = s.train.image(i);
        for c in 0..3 {
            let m = img[c * PLANE..(c + 1) * PLANE]
                .iter()
                .map(|&b| f64::from(b))
                .sum::<f64>()
                / PLANE as f64;
            class_mean[s.train.labels[i] as usize][c] += m / 200.0;
        }
    }
    for c in 0..3 {
        let vals: Vec<f64> = class_mean.iter().map(|m| m[c]).collect();
        let lo = vals.iter().cloned().fold(f64::INFINITY, f64::min);
        let hi = vals.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        assert!(hi - lo < 12.0, "channel {c}: class means {vals:?}");
    }
}

/// Raw-pixel features: the normalised image as fill_batch writes it.
fn features(d: &Dataset, norm: &Normalizer) -> (Vec<f32>, Vec<usize>) {
    let idx: Vec<usize> = (0..d.len()).collect();
    let mut x = vec![0.0; d.len() * IMAGE_BYTES];
    let mut y = vec![0; d.len()];
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    fill_batch(d, &idx, norm, &Augment::NONE, &mut rng, &mut x, &mut y);
    (x, y)
}

fn nearest_class_mean_accuracy(train: &Dataset, test: &Dataset, norm: &Normalizer) -> f64 {
    let (xtr, ytr) = features(train, norm);
    let (xte, yte) = features(test, norm);
    let mut means = vec![0.0f64; NUM_CLASSES * IMAGE_BYTES];
    let mut counts = [0usize; NUM_CLASSES];
    for (x, &y) in xtr.chunks_exact(IMAGE_BYTES).zip(&ytr) {
        counts[y] += 1;
        for (m, &v) in means[y * IMAGE_BYTES..(y + 1) * IMAGE_BYTES]
            .iter_mut()
            .zip(x)
        {
            *m += f64::from(v);
        }
    }
    for (k, m) in means.chunks_exact_mut(IMAGE_BYTES).enumerate() {
        m.iter_mut().for_each(|v| *v /= counts[k] as f64);
    }
    let correct = xte
        .chunks_exact(IMAGE_BYTES)
        .zip(&yte)
        .filter(|&(x, &y)| {
            let d = |k: usize| -> f64 {
                means[k * IMAGE_BYTES..(k + 1) * IMAGE_BYTES]
                    .iter()
                    .zip(x)
                    .map(|(m, &v)| (m - f64::from(v)).powi(2))
                    .sum()
            };
            let best = (0..NUM_CLASSES)
                .min_by(|&a, &b| d(a).total_cmp(&d(b)))
                .unwrap();
            best == y
        })
        .count();
    correct as f64 / test.len() as f64
}

/// Multinomial logistic regression on raw pixels, minibatch SGD with L2 decay; returns
/// (train accuracy, test accuracy).
fn softmax_regression_accuracy(
    train: &Dataset,
    test: &Dataset,
    norm: &Normalizer,
    epochs: usize,
) -> (f64, f64) {
    let (xtr, ytr) = features(train, norm);
    let (xte, yte) = features(test, norm);
    let d = IMAGE_BYTES;
    let mut w = vec![0.0f32; NUM_CLASSES * d];
    let mut b = [0.0f32; NUM_CLASSES];
    let logits = |w: &[f32], b: &[f32; NUM_CLASSES], x: &[f32]| -> [f32; NUM_CLASSES] {
        let mut z = *b;
        for (k, zk) in z.iter_mut().enumerate() {
            *zk += w[k * d..(k + 1) * d]
                .iter()
                .zip(x)
                .map(|(a, b)| a * b)
                .sum::<f32>();
        }
        z
    };
    let (lr, decay, batch) = (0.01f32, 1e-3f32, 50);
    let mut order: Vec<usize> = (0..train.len()).collect();
    let mut rng = ChaCha8Rng::seed_from_u64(9);
    for _ in 0..epochs {
        use rand::seq::SliceRandom;
        order.shuffle(&mut rng);
        for chunk in order.chunks(batch) {
            let mut gw = vec![0.0f32; NUM_CLASSES * d];
            let mut gb = [0.0f32; NUM_CLASSES];
            for &i in chunk {
                let x = &xtr[i * d..(i + 1) * d];
                let z = logits(&w, &b, x);
                let m = z.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
                let e: Vec<f32> = z.iter().map(|v| (v - m).exp()).collect();
                let s: f32 = e.iter().sum();
                for k in 0..NUM_CLASSES {
                    let g = e[k] / s - if k == ytr[i] { 1.0 } else { 0.0 };
                    gb[k] += g;
                    for (gwk, &xv) in gw[k * d..(k + 1) * d].iter_mut().zip(x) {
                        *gwk += g * xv;
                    }
                }
            }
            let scale = lr / chunk.len() as f32;
            for (wv, g) in w.iter_mut().zip(&gw) {
                *wv -= scale * g + lr * decay * *wv;
            }
            for (bv, g) in b.iter_mut().zip(&gb) {
                *bv -= scale * g;
            }
        }
    }
    let acc = |x: &[f32], y: &[usize]| -> f64 {
        let correct = x
            .chunks_exact(d)
            .zip(y)
            .filter(|&(xi, &yi)| {
                let z = logits(&w, &b, xi);
                (0..NUM_CLASSES)
                    .max_by(|&a, &c| z[a].total_cmp(&z[c]))
                    .unwrap()
                    == yi
            })
            .count();
        correct as f64 / y.len() as f64
    };
    (acc(&xtr, &ytr), acc(&xte, &yte))
}

/// Linear baselines on raw pixels stay far from solving the task (chance is 10 %).
/// `cargo test --release -p norm-train --test data -- --nocapture baselines` prints the numbers
/// quoted in docs/data.md.
#[test]
fn raw_pixel_linear_baselines_are_weak() {
    let s = synthetic(0, 2000, 1000);
    let norm = Normalizer::from_dataset(&s.train);
    let ncm = nearest_class_mean_accuracy(&s.train, &s.test, &norm);
    let (sm_train, sm_test) = softmax_regression_accuracy(&s.train, &s.test, &norm, 10);
    println!(
        "nearest class mean: test {:.1} %; softmax regression (10 epochs): train {:.1} %, test {:.1} %",
        100.0 * ncm,
        100.0 * sm_train,
        100.0 * sm_test
    );
    assert!(ncm < 0.35, "nearest class mean test accuracy {ncm}");
    assert!(sm_test < 0.45, "softmax regression test accuracy {sm_test}");
    // The regression did fit something: the gap shows pixels memorise but do not generalise.
    assert!(sm_train > sm_test + 0.1, "train {sm_train}, test {sm_test}");
}

// ---------------------------------------------------------------------------------------------
// CIFAR-10 binary format

fn small_split() -> Split {
    synthetic(21, 23, 7)
}

#[test]
fn cifar_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("export"); // created by write_cifar10
    let s = small_split();
    write_cifar10(&out, &s).unwrap();
    assert_eq!(
        fs::metadata(out.join("data_batch_1.bin")).unwrap().len(),
        23 * 3073
    );
    assert_eq!(
        fs::metadata(out.join("test_batch.bin")).unwrap().len(),
        7 * 3073
    );
    let meta = fs::read_to_string(out.join("batches.meta.txt")).unwrap();
    assert_eq!(meta.lines().collect::<Vec<_>>(), CLASS_NAMES);
    let back = load_cifar10(&out).unwrap();
    assert_eq!(back.train, s.train);
    assert_eq!(back.test, s.test);
    // Writing again into the same directory replaces the files.
    let s2 = synthetic(22, 5, 3);
    write_cifar10(&out, &s2).unwrap();
    let back = load_cifar10(&out).unwrap();
    assert_eq!(back.train, s2.train);
    assert_eq!(back.test, s2.test);
}

/// One record in the official layout: label byte, then 1024 R, 1024 G, 1024 B bytes.
fn record(
    label: u8,
    r: impl Fn(usize) -> u8,
    g: impl Fn(usize) -> u8,
    b: impl Fn(usize) -> u8,
) -> Vec<u8> {
    let mut v = vec![label];
    v.extend((0..PLANE).map(r));
    v.extend((0..PLANE).map(g));
    v.extend((0..PLANE).map(b));
    v
}

#[test]
fn reads_official_record_layout_across_batches() {
    let dir = tempfile::tempdir().unwrap();
    // data_batch_1.bin and data_batch_3.bin present (2, 4, 5 absent): both are read, in order.
    let mut b1 = record(3, |p| (p % 256) as u8, |_| 10, |p| (p / 32) as u8);
    b1.extend(record(9, |_| 0, |_| 255, |_| 128));
    fs::write(dir.path().join("data_batch_1.bin"), &b1).unwrap();
    fs::write(
        dir.path().join("data_batch_3.bin"),
        record(0, |_| 1, |_| 2, |_| 3),
    )
    .unwrap();
    fs::write(
        dir.path().join("test_batch.bin"),
        record(7, |p| (p % 32) as u8, |_| 0, |_| 0),
    )
    .unwrap();
    let s = load_cifar10(dir.path()).unwrap();
    assert_eq!(s.train.labels, [3, 9, 0]);
    assert_eq!(s.test.labels, [7]);
    let img = s.train.image(0);
    // Pixel (y, x) of channel c sits at c * 1024 + y * 32 + x.
    let (y, x) = (5, 17);
    assert_eq!(img[y * IMAGE_SIZE + x], ((y * 32 + x) % 256) as u8);
    assert_eq!(img[PLANE + y * IMAGE_SIZE + x], 10);
    assert_eq!(img[2 * PLANE + y * IMAGE_SIZE + x], y as u8);
    assert!(s.train.image(1)[..PLANE].iter().all(|&v| v == 0));
    assert!(s.train.image(1)[PLANE..2 * PLANE].iter().all(|&v| v == 255));
    assert!(s.train.image(2)[2 * PLANE..].iter().all(|&v| v == 3));
    assert_eq!(s.test.image(0)[3 * 32 + 31], 31);
}

fn err_text(e: DataError) -> String {
    e.to_string()
}

#[test]
fn missing_directory_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no_such_dir");
    let e = load_cifar10(&missing).unwrap_err();
    assert!(matches!(e, DataError::MissingDir { .. }));
    let msg = err_text(e);
    assert!(
        msg.contains("no_such_dir") && msg.contains("does not exist"),
        "{msg}"
    );
}

#[test]
fn missing_test_batch_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(
        dir.path().join("data_batch_1.bin"),
        record(1, |_| 0, |_| 0, |_| 0),
    )
    .unwrap();
    let e = load_cifar10(dir.path()).unwrap_err();
    assert!(matches!(e, DataError::MissingFile { .. }));
    let msg = err_text(e);
    assert!(
        msg.contains("test_batch.bin") && msg.contains("missing"),
        "{msg}"
    );
}

#[test]
fn missing_train_batches_are_reported() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(
        dir.path().join("test_batch.bin"),
        record(1, |_| 0, |_| 0, |_| 0),
    )
    .unwrap();
    // data_batch_6.bin is not part of the set.
    fs::write(
        dir.path().join("data_batch_6.bin"),
        record(1, |_| 0, |_| 0, |_| 0),
    )
    .unwrap();
    let e = load_cifar10(dir.path()).unwrap_err();
    assert!(matches!(e, DataError::NoTrainBatches { .. }));
    let msg = err_text(e);
    assert!(msg.contains("data_batch_1.bin"), "{msg}");
    assert!(msg.contains(&dir.path().display().to_string()), "{msg}");
}

#[test]
fn bad_size_is_reported_with_the_file() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(
        dir.path().join("data_batch_1.bin"),
        record(1, |_| 0, |_| 0, |_| 0),
    )
    .unwrap();
    let mut bad = record(2, |_| 0, |_| 0, |_| 0);
    bad.extend([0u8; 100]);
    fs::write(dir.path().join("data_batch_2.bin"), &bad).unwrap();
    fs::write(
        dir.path().join("test_batch.bin"),
        record(1, |_| 0, |_| 0, |_| 0),
    )
    .unwrap();
    let e = load_cifar10(dir.path()).unwrap_err();
    assert!(matches!(e, DataError::BadSize { size: 3173, .. }), "{e:?}");
    let msg = err_text(e);
    assert!(
        msg.contains("data_batch_2.bin") && msg.contains("3173") && msg.contains("multiple of"),
        "{msg}"
    );
}

#[test]
fn bad_label_is_reported_with_file_and_record() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(
        dir.path().join("data_batch_1.bin"),
        record(1, |_| 0, |_| 0, |_| 0),
    )
    .unwrap();
    let mut test = record(9, |_| 0, |_| 0, |_| 0);
    test.extend(record(0, |_| 0, |_| 0, |_| 0));
    test.extend(record(10, |_| 0, |_| 0, |_| 0));
    fs::write(dir.path().join("test_batch.bin"), &test).unwrap();
    let e = load_cifar10(dir.path()).unwrap_err();
    assert!(
        matches!(
            e,
            DataError::BadLabel {
                record: 2,
                label: 10,
                ..
            }
        ),
        "{e:?}"
    );
    let msg = err_text(e);
    assert!(
        msg.contains("test_batch.bin") && msg.contains("record 2") && msg.contains("label 10"),
        "{msg}"
    );
}

#[test]
fn write_refuses_inconsistent_data_and_stale_batches() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = small_split();
    s.test.labels[3] = 12;
    let msg = err_text(write_cifar10(dir.path(), &s).unwrap_err());
    assert!(
        msg.contains("test_batch.bin") && msg.contains("label 12"),
        "{msg}"
    );
    let mut s = small_split();
    s.train.images.pop();
    let msg = err_text(write_cifar10(dir.path(), &s).unwrap_err());
    assert!(msg.contains("data_batch_1.bin"), "{msg}");
    // Nothing was written by the refused calls.
    assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);

    fs::write(dir.path().join("data_batch_4.bin"), b"").unwrap();
    let e = write_cifar10(dir.path(), &small_split()).unwrap_err();
    assert!(matches!(e, DataError::StaleTrainBatch { .. }));
    let msg = err_text(e);
    assert!(msg.contains("data_batch_4.bin"), "{msg}");
}

#[test]
fn io_errors_name_the_path() {
    let dir = tempfile::tempdir().unwrap();
    // A directory where the test file should be: it is not a file, so it is "missing".
    fs::create_dir(dir.path().join("test_batch.bin")).unwrap();
    let msg = err_text(load_cifar10(dir.path()).unwrap_err());
    assert!(msg.contains("test_batch.bin"), "{msg}");
    // Writing under a regular file fails with an I/O error naming the path.
    let file = dir.path().join("plain_file");
    fs::write(&file, b"x").unwrap();
    let e = write_cifar10(&file.join("sub"), &small_split()).unwrap_err();
    assert!(matches!(e, DataError::Io { .. }), "{e:?}");
    assert!(err_text(e).contains("plain_file"));
}

// ---------------------------------------------------------------------------------------------
// Normalizer and fill_batch

fn hand_made() -> Dataset {
    // Two images. Channel R: image 0 all 0, image 1 all 255 → mean 0.5, std 0.5.
    // Channel G: all 51 → mean 0.2, std 0 → std 1 by convention.
    // Channel B: half the pixels 0 and half 102 in each image → mean 0.2, std 0.2.
    let mut images = vec![0u8; 2 * IMAGE_BYTES];
    for (i, img) in images.chunks_exact_mut(IMAGE_BYTES).enumerate() {
        img[..PLANE].fill(if i == 0 { 0 } else { 255 });
        img[PLANE..2 * PLANE].fill(51);
        for (p, v) in img[2 * PLANE..].iter_mut().enumerate() {
            *v = if p % 2 == 0 { 0 } else { 102 };
        }
    }
    Dataset {
        images,
        labels: vec![4, 6],
    }
}

#[test]
fn normalizer_on_hand_made_set() {
    let n = Normalizer::from_dataset(&hand_made());
    let close = |a: f32, b: f32| (a - b).abs() < 1e-6;
    assert!(close(n.mean[0], 0.5) && close(n.std[0], 0.5), "{n:?}");
    assert!(close(n.mean[1], 0.2) && n.std[1] == 1.0, "{n:?}");
    assert!(close(n.mean[2], 0.2) && close(n.std[2], 0.2), "{n:?}");
    let empty = Dataset {
        images: vec![],
        labels: vec![],
    };
    assert_eq!(
        Normalizer::from_dataset(&empty),
        Normalizer {
            mean: [0.0; 3],
            std: [1.0; 3]
        }
    );
}

#[test]
fn normalizer_matches_a_two_pass_f64_computation() {
    let s = synthetic(6, 100, 0);
    let n = Normalizer::from_dataset(&s.train);
    for c in 0..3 {
        let vals: Vec<f64> = s
            .train
            .images
            .chunks_exact(IMAGE_BYTES)
            .flat_map(|img| img[c * PLANE..(c + 1) * PLANE].iter())
            .map(|&b| f64::from(b) / 255.0)
            .collect();
        let mean = vals.iter().sum::<f64>() / vals.len() as f64;
        let var = vals.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / vals.len() as f64;
        assert!((f64::from(n.mean[c]) - mean).abs() < 1e-6);
        assert!((f64::from(n.std[c]) - var.sqrt()).abs() < 1e-6);
    }
}

fn test_norm() -> Normalizer {
    Normalizer {
        mean: [0.49, 0.48, 0.45],
        std: [0.25, 0.24, 0.26],
    }
}

#[test]
fn fill_batch_without_augmentation_is_the_normalised_image() {
    let s = synthetic(13, 20, 0);
    let norm = test_norm();
    let idx = [7usize, 0, 19, 7];
    let mut out = vec![f32::NAN; idx.len() * IMAGE_BYTES];
    let mut labels = vec![99; idx.len()];
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    fill_batch(
        &s.train,
        &idx,
        &norm,
        &Augment::NONE,
        &mut rng,
        &mut out,
        &mut labels,
    );
    assert_eq!(labels, [7, 0, 9, 7]);
    for (j, &i) in idx.iter().enumerate() {
        let img = s.train.image(i);
        for c in 0..3 {
            for p in 0..PLANE {
                let want = (img[c * PLANE + p] as f32 / 255.0 - norm.mean[c]) / norm.std[c];
                assert_eq!(out[j * IMAGE_BYTES + c * PLANE + p], want);
            }
        }
    }
    // No draw from the rng without augmentation.
    let mut fresh = ChaCha8Rng::seed_from_u64(1);
    assert_eq!(
        rand::Rng::random::<u64>(&mut rng),
        rand::Rng::random::<u64>(&mut fresh)
    );
}

/// Finds a seed whose first draws give crop offsets `(dy, dx)` (pad `p`) and the given flip.
fn seed_for(p: u32, dy: u32, dx: u32, flip: bool) -> u64 {
    use rand::Rng;
    (0..10_000u64)
        .find(|&s| {
            let mut r = ChaCha8Rng::seed_from_u64(s);
            r.random_range(0..=2 * p) == dy
                && r.random_range(0..=2 * p) == dx
                && r.random_bool(0.5) == flip
        })
        .expect("a seed with these draws")
}

#[test]
fn fill_batch_crop_and_flip_move_pixels() {
    let s = synthetic(14, 3, 0);
    let norm = test_norm();
    let raw = s.train.image(2);
    let zero: [f32; 3] = std::array::from_fn(|c| (0.0 - norm.mean[c]) / norm.std[c]);
    let v = |c: usize, y: usize, x: usize| {
        (raw[c * PLANE + y * 32 + x] as f32 / 255.0 - norm.mean[c]) / norm.std[c]
    };
    let aug = Augment {
        crop_pad: 4,
        flip: true,
    };
    let mut out = vec![0.0; IMAGE_BYTES];
    let mut labels = [0];

    // Offsets (dy, dx) = (1, 7) - 4 = (-3, +3), no flip: out(y, x) = raw(y - 3, x + 3).
    let mut rng = ChaCha8Rng::seed_from_u64(seed_for(4, 1, 7, false));
    fill_batch(&s.train, &[2], &norm, &aug, &mut rng, &mut out, &mut labels);
    assert_eq!(labels, [2]);
    for c in 0..3 {
        for y in 0..32 {
            for x in 0..32 {
                let got = out[c * PLANE + y * 32 + x];
                let want = if y < 3 || x + 3 >= 32 {
                    zero[c]
                } else {
                    v(c, y - 3, x + 3)
                };
                assert_eq!(got, want, "c {c} y {y} x {x}");
            }
        }
    }

    // Offsets (4, 4) - 4 = (0, 0) with a flip: a pure mirror image.
    let mut rng = ChaCha8Rng::seed_from_u64(seed_for(4, 4, 4, true));
    fill_batch(&s.train, &[2], &norm, &aug, &mut rng, &mut out, &mut labels);
    for c in 0..3 {
        for y in 0..32 {
            for x in 0..32 {
                assert_eq!(out[c * PLANE + y * 32 + x], v(c, y, 31 - x));
            }
        }
    }

    // Offsets (8, 0) - 4 = (+4, -4) with a flip: out(y, x) = raw(y + 4, 31 - x - 4).
    let mut rng = ChaCha8Rng::seed_from_u64(seed_for(4, 8, 0, true));
    fill_batch(&s.train, &[2], &norm, &aug, &mut rng, &mut out, &mut labels);
    for c in 0..3 {
        for y in 0..32 {
            for x in 0..32 {
                let (sy, sx) = (y as isize + 4, 31 - x as isize - 4);
                let want = if sy >= 32 || sx < 0 {
                    zero[c]
                } else {
                    v(c, sy as usize, sx as usize)
                };
                assert_eq!(out[c * PLANE + y * 32 + x], want, "c {c} y {y} x {x}");
            }
        }
    }
}

#[test]
fn fill_batch_is_deterministic_for_a_seeded_rng_and_varies_across_images() {
    let s = synthetic(15, 40, 0);
    let norm = Normalizer::from_dataset(&s.train);
    let idx: Vec<usize> = (0..40).rev().collect();
    let run = |seed: u64| {
        let mut out = vec![0.0; idx.len() * IMAGE_BYTES];
        let mut labels = vec![0; idx.len()];
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        fill_batch(
            &s.train,
            &idx,
            &norm,
            &Augment::CIFAR,
            &mut rng,
            &mut out,
            &mut labels,
        );
        (out, labels)
    };
    let (a, la) = run(3);
    let (b, lb) = run(3);
    assert_eq!(a, b);
    assert_eq!(la, lb);
    let (c, _) = run(4);
    assert_ne!(a, c);
    // Augmentation changed most images relative to the plain normalised copy.
    let (plain, _) = {
        let mut out = vec![0.0; idx.len() * IMAGE_BYTES];
        let mut labels = vec![0; idx.len()];
        let mut rng = ChaCha8Rng::seed_from_u64(0);
        fill_batch(
            &s.train,
            &idx,
            &norm,
            &Augment::NONE,
            &mut rng,
            &mut out,
            &mut labels,
        );
        (out, labels)
    };
    let changed = a
        .chunks_exact(IMAGE_BYTES)
        .zip(plain.chunks_exact(IMAGE_BYTES))
        .filter(|(x, y)| x != y)
        .count();
    assert!(changed >= 35, "{changed} of 40 images changed");
}

#[test]
#[should_panic(expected = "out must hold")]
fn fill_batch_checks_the_output_length() {
    let s = synthetic(1, 2, 0);
    let mut out = vec![0.0; IMAGE_BYTES];
    let mut labels = [0; 2];
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    fill_batch(
        &s.train,
        &[0, 1],
        &test_norm(),
        &Augment::NONE,
        &mut rng,
        &mut out,
        &mut labels,
    );
}

// ---------------------------------------------------------------------------------------------
// Debugging aid

/// Writes a grid of synthetic samples (one row per class, 12 per row, 3× enlarged) to
/// `/tmp/normlab_samples.png` and `.ppm`:
/// `cargo test --release -p norm-train --test data -- --ignored --nocapture sample_grid`.
#[test]
#[ignore]
fn sample_grid() {
    let (per_class, zoom, gap) = (12, 3, 2);
    let s = synthetic(0, per_class * NUM_CLASSES, 0);
    let cell = IMAGE_SIZE * zoom + gap;
    let (w, h) = (per_class * cell + gap, NUM_CLASSES * cell + gap);
    let mut rgb = vec![255u8; w * h * 3];
    for i in 0..s.train.len() {
        let (row, col) = (s.train.labels[i] as usize, i / NUM_CLASSES);
        let img = s.train.image(i);
        for y in 0..IMAGE_SIZE * zoom {
            for x in 0..IMAGE_SIZE * zoom {
                let (py, px) = (row * cell + gap + y, col * cell + gap + x);
                for c in 0..3 {
                    rgb[(py * w + px) * 3 + c] =
                        img[c * PLANE + (y / zoom) * IMAGE_SIZE + x / zoom];
                }
            }
        }
    }
    let mut ppm = format!("P6\n{w} {h}\n255\n").into_bytes();
    ppm.extend_from_slice(&rgb);
    fs::write("/tmp/normlab_samples.ppm", ppm).unwrap();
    write_png(Path::new("/tmp/normlab_samples.png"), w, h, &rgb);
    println!("rows: {CLASS_NAMES:?}; wrote /tmp/normlab_samples.png and .ppm");
}

/// A minimal PNG writer (8-bit RGB, stored deflate blocks), enough for the sample grid.
fn write_png(path: &Path, w: usize, h: usize, rgb: &[u8]) {
    fn crc32(data: &[u8]) -> u32 {
        let mut c = 0xffff_ffffu32;
        for &b in data {
            c ^= u32::from(b);
            for _ in 0..8 {
                c = if c & 1 != 0 {
                    0xedb8_8320 ^ (c >> 1)
                } else {
                    c >> 1
                };
            }
        }
        !c
    }
    fn chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
        out.extend((data.len() as u32).to_be_bytes());
        let mut body = kind.to_vec();
        body.extend_from_slice(data);
        out.extend_from_slice(&body);
        out.extend(crc32(&body).to_be_bytes());
    }
    let mut raw = Vec::with_capacity(h * (w * 3 + 1));
    for row in rgb.chunks_exact(w * 3) {
        raw.push(0); // filter: none
        raw.extend_from_slice(row);
    }
    let mut z = vec![0x78, 0x01];
    let blocks: Vec<&[u8]> = raw.chunks(65_535).collect();
    for (k, b) in blocks.iter().enumerate() {
        z.push(u8::from(k + 1 == blocks.len()));
        z.extend((b.len() as u16).to_le_bytes());
        z.extend((!(b.len() as u16)).to_le_bytes());
        z.extend_from_slice(b);
    }
    let (mut a, mut bsum) = (1u32, 0u32);
    for &v in &raw {
        a = (a + u32::from(v)) % 65_521;
        bsum = (bsum + a) % 65_521;
    }
    z.extend(((bsum << 16) | a).to_be_bytes());
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = Vec::new();
    ihdr.extend((w as u32).to_be_bytes());
    ihdr.extend((h as u32).to_be_bytes());
    ihdr.extend([8, 2, 0, 0, 0]);
    chunk(&mut png, b"IHDR", &ihdr);
    chunk(&mut png, b"IDAT", &z);
    chunk(&mut png, b"IEND", &[]);
    fs::write(path, png).unwrap();
}
