//! Every size the kernels choose by, in one place (after matrixmultiply's `archparam.rs`).
//!
//! Two kinds of constant live here, and the difference is what keeps results bit-identical on
//! every machine:
//!
//! * **The shape of every reduction** ([`BLOCK`], [`TILE`], [`STRIP`]) is fixed by the data.
//!   It decides which values are summed in f32 together and in which order partial results are
//!   merged, so it is the same on every machine and for every thread count. These are constants,
//!   chosen so that the smallest caches the project runs on (32 KiB L1d, 512 KiB L2) hold them.
//! * **The walk** ([`Tuning`]) decides only who computes what and in which order the memory is
//!   visited: rayon task sizes, when to spread the work inside one item, how many strips a task
//!   walks sample by sample, and whether parameters or a slab stay in cache between two passes.
//!   It is derived from the caches of the machine the code runs on ([`CacheSizes::detect`]),
//!   read once per process.
//!
//! Cache sizes come from Linux's `/sys/devices/system/cpu/cpu0/cache/`, else a fallback
//! ([`CacheSizes::FALLBACK`], a Zen3 core: the smallest the project runs on). The environment
//! variables `NORMLAB_L1D`, `NORMLAB_L2` and `NORMLAB_L3` override each (bytes, or with a `K`,
//! `M` or `G` suffix), e.g. to reproduce another machine's walk.

use std::sync::OnceLock;

use crate::simd::Sink;

/// Elements reduced in f32 before the partial result is widened to f64. 4096 f32 = 16 KiB: a
/// block read twice (two-pass statistics) is still in L1 the second time.
pub(crate) const BLOCK: usize = 4096;

/// Elements per tile (64 KiB of f32): the statistics of a plane or group are merged tile by tile
/// in tile order, and a tile is the unit of nested parallelism inside one plane or group.
pub(crate) const TILE: usize = 4 * BLOCK;

/// Elements of a LayerNorm column strip (8 KiB of f32): the unit of parallel work of every pass
/// that touches a per-element parameter, and the merge unit of the backward's sums.
pub(crate) const STRIP: usize = 2048;

/// Sizes of the data caches one core sees, in bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CacheSizes {
    /// Level-1 data cache.
    pub l1d: usize,
    /// Level-2 cache.
    pub l2: usize,
    /// Last-level cache (shared by the cores).
    pub l3: usize,
}

impl CacheSizes {
    /// Used when the caches cannot be read: one core of an AMD Zen3 (32 KiB, 512 KiB, 32 MiB).
    pub const FALLBACK: CacheSizes = CacheSizes {
        l1d: 32 << 10,
        l2: 512 << 10,
        l3: 32 << 20,
    };

    /// The caches of this machine: sysfs, then the fallback, then the `NORMLAB_*` overrides.
    pub fn detect() -> CacheSizes {
        let mut c = Self::from_sysfs().unwrap_or(Self::FALLBACK);
        for (var, slot) in [
            ("NORMLAB_L1D", &mut c.l1d),
            ("NORMLAB_L2", &mut c.l2),
            ("NORMLAB_L3", &mut c.l3),
        ] {
            if let Some(v) = std::env::var(var).ok().and_then(|s| parse_size(&s)) {
                *slot = v;
            }
        }
        c
    }

    fn from_sysfs() -> Option<CacheSizes> {
        let mut c = CacheSizes {
            l1d: 0,
            l2: 0,
            l3: 0,
        };
        let dir = std::fs::read_dir("/sys/devices/system/cpu/cpu0/cache").ok()?;
        for entry in dir.flatten() {
            let p = entry.path();
            let read = |f: &str| std::fs::read_to_string(p.join(f)).ok();
            let (Some(level), Some(kind), Some(size)) = (read("level"), read("type"), read("size"))
            else {
                continue;
            };
            let Some(size) = parse_size(size.trim()) else {
                continue;
            };
            match (level.trim(), kind.trim()) {
                ("1", "Data") => c.l1d = size,
                ("2", "Data" | "Unified") => c.l2 = size,
                ("3", "Data" | "Unified") => c.l3 = size,
                _ => {}
            }
        }
        if c.l3 == 0 {
            c.l3 = c.l2;
        }
        (c.l1d > 0 && c.l2 > 0).then_some(c)
    }
}

/// `"512K"`, `"32M"`, `"1G"` or plain bytes.
fn parse_size(s: &str) -> Option<usize> {
    let s = s.trim();
    let (digits, shift) = match s.as_bytes().last()? {
        b'K' | b'k' => (&s[..s.len() - 1], 10),
        b'M' | b'm' => (&s[..s.len() - 1], 20),
        b'G' | b'g' => (&s[..s.len() - 1], 30),
        _ => (s, 0),
    };
    let v: usize = digits.trim().parse().ok()?;
    (v > 0).then(|| v << shift)
}

/// The walk's sizes for this machine (see the [module docs](self)). None of them changes a bit
/// of any result.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Tuning {
    /// The caches it was derived from.
    pub caches: CacheSizes,
    /// Elements per rayon task at most when the items are small. Left to itself, rayon hands
    /// each thread a few long runs of small items and one thread finishes alone. 128 KiB was
    /// measured best (docs/performance.md); a smaller L2 shrinks it so a task's data fits.
    pub task: usize,
    /// With fewer top-level items (channels, planes) than this, the tiles inside an item are
    /// spread over the pool too.
    pub nest_below: usize,
    /// Bytes a slab may have to be reread from L2 right after it was read (half of L2).
    pub l2_reuse: usize,
    /// Bytes a working set may have to stay in the last-level cache between two passes (half of
    /// L3, leaving room for the other core).
    pub l3_reuse: usize,
    /// Output bytes from which a kernel streams its output past the caches ([`Sink`]): three
    /// quarters of the last-level cache, glibc's `memcpy` threshold. An output that large
    /// evicts the input it is computed from and little of it would be left for its consumer.
    pub stream_from: usize,
}

impl Tuning {
    /// The walk for caches `c`.
    pub fn for_caches(c: CacheSizes) -> Tuning {
        Tuning {
            caches: c,
            task: (c.l2 / 4 / 4).clamp(4 * 1024, 32 * 1024),
            nest_below: 16,
            l2_reuse: c.l2 / 2,
            l3_reuse: c.l3 / 2,
            stream_from: c.l3 / 4 * 3,
        }
    }

    /// Column strips per band of a walk over `strips` [`STRIP`]s whose per-column state
    /// (`bytes` per element: LayerNorm's `γ`, `dγ`, `dβ`) stays in L2 while every sample's piece
    /// of the band goes by, so each sample is read in runs of a band, not hops of a strip. At
    /// most a quarter of the strips, so that the pool still has bands to share.
    pub(crate) fn strips_per_band(&self, strips: usize, bytes: usize) -> usize {
        (self.l2_reuse / (bytes * STRIP)).clamp(1, (strips / 4).max(1))
    }

    /// How a kernel writes an output of `len` f32.
    #[inline]
    pub(crate) fn sink(&self, len: usize) -> Sink {
        if len.saturating_mul(4) > self.stream_from {
            Sink::Streamed
        } else {
            Sink::Cached
        }
    }
}

/// The walk of this process, derived once from [`CacheSizes::detect`].
pub(crate) fn tuning() -> &'static Tuning {
    static T: OnceLock<Tuning> = OnceLock::new();
    T.get_or_init(|| Tuning::for_caches(CacheSizes::detect()))
}

/// The cache sizes the kernels tune their walk to in this process (detected once, with the
/// `NORMLAB_*` overrides applied).
pub fn cache_sizes() -> CacheSizes {
    tuning().caches
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outputs_beyond_three_quarters_of_the_last_level_cache_are_streamed() {
        let t = Tuning::for_caches(CacheSizes::FALLBACK);
        let from = CacheSizes::FALLBACK.l3 / 4 * 3 / 4;
        assert_eq!(t.sink(from), Sink::Cached);
        assert_eq!(t.sink(from + 1), Sink::Streamed);
        assert_eq!(t.sink(usize::MAX), Sink::Streamed);
    }

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_size("512K"), Some(512 << 10));
        assert_eq!(parse_size("32768K"), Some(32 << 20));
        assert_eq!(parse_size("2M"), Some(2 << 20));
        assert_eq!(parse_size("4096"), Some(4096));
        assert_eq!(parse_size(""), None);
        assert_eq!(parse_size("0K"), None);
        assert_eq!(parse_size("lots"), None);
    }

    #[test]
    fn tasks_follow_small_l2_only() {
        let t = Tuning::for_caches(CacheSizes::FALLBACK);
        assert_eq!(t.task, 32 * 1024);
        let big = Tuning::for_caches(CacheSizes {
            l2: 2 << 20,
            ..CacheSizes::FALLBACK
        });
        assert_eq!(big.task, 32 * 1024);
        let small = Tuning::for_caches(CacheSizes {
            l2: 128 << 10,
            ..CacheSizes::FALLBACK
        });
        assert_eq!(small.task, 8 * 1024);
    }
}
