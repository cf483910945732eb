//! What the benches need to know about the machine at hand: its cache sizes, read at run time
//! from Linux's sysfs, and the DRAM-resident shape derived from the last-level cache.

use norm_kernels::Nchw;

/// One cache of CPU 0 as Linux describes it in `/sys/devices/system/cpu/cpu0/cache/index*`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cache {
    /// 1, 2, 3, ...
    pub level: u32,
    /// `Data`, `Instruction` or `Unified`.
    pub kind: String,
    /// Size in bytes.
    pub bytes: usize,
    /// `shared_cpu_list`, e.g. `0-1`.
    pub shared_with: String,
}

/// The caches of CPU 0, in sysfs order; empty where sysfs does not say (not Linux, containers
/// that hide it).
pub fn caches() -> Vec<Cache> {
    let mut out = Vec::new();
    for i in 0.. {
        let dir = format!("/sys/devices/system/cpu/cpu0/cache/index{i}");
        let read =
            |f: &str| std::fs::read_to_string(format!("{dir}/{f}")).map(|s| s.trim().to_owned());
        let (Ok(level), Ok(kind), Ok(size)) = (read("level"), read("type"), read("size")) else {
            break;
        };
        let (Ok(level), Some(bytes)) = (level.parse(), parse_size(&size)) else {
            continue;
        };
        out.push(Cache {
            level,
            kind,
            bytes,
            shared_with: read("shared_cpu_list").unwrap_or_default(),
        });
    }
    out
}

/// `32K`, `512K`, `32768K`, `2M` → bytes.
fn parse_size(s: &str) -> Option<usize> {
    let (num, mult) = match s.as_bytes().last()? {
        b'K' => (&s[..s.len() - 1], 1 << 10),
        b'M' => (&s[..s.len() - 1], 1 << 20),
        b'G' => (&s[..s.len() - 1], 1 << 30),
        _ => (s, 1),
    };
    num.parse::<usize>().ok().map(|n| n * mult)
}

/// Assumed when sysfs gives no last-level cache: 32 MiB, the L3 of the project's Zen3 guests.
pub const FALLBACK_LLC: usize = 32 << 20;

/// The size of the largest (last-level) cache, or [`FALLBACK_LLC`].
pub fn last_level_cache() -> usize {
    caches()
        .iter()
        .map(|c| c.bytes)
        .max()
        .unwrap_or(FALLBACK_LLC)
}

/// The seed's C, H, W with a batch large enough that a forward's working set (`x` read, `y`
/// written: 8 bytes per element) is at least 4× `llc` bytes, so every pass streams from DRAM.
pub fn dram_shape_for(llc: usize) -> Nchw {
    let (c, h, w) = (64, 120, 120);
    let per_sample = 8 * c * h * w;
    Nchw::new((4 * llc).div_ceil(per_sample).max(1), c, h, w)
}

/// [`dram_shape_for`] the last-level cache of this machine.
pub fn dram_shape() -> Nchw {
    dram_shape_for(last_level_cache())
}

/// One line: every cache of CPU 0, e.g. `L1d 32 KiB, L1i 32 KiB, L2 512 KiB, L3 32 MiB (0-1)`.
pub fn describe_caches() -> String {
    let list = caches();
    if list.is_empty() {
        return "unknown (no /sys/devices/system/cpu/cpu0/cache)".into();
    }
    list.iter()
        .map(|c| {
            let tag = match c.kind.as_str() {
                "Data" => "d",
                "Instruction" => "i",
                _ => "",
            };
            let size = if c.bytes % (1 << 20) == 0 {
                format!("{} MiB", c.bytes >> 20)
            } else {
                format!("{} KiB", c.bytes >> 10)
            };
            format!("L{}{tag} {size} (cpus {})", c.level, c.shared_with)
        })
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_size("32K"), Some(32 << 10));
        assert_eq!(parse_size("32768K"), Some(32 << 20));
        assert_eq!(parse_size("2M"), Some(2 << 20));
        assert_eq!(parse_size("x"), None);
    }

    #[test]
    fn dram_shape_is_four_llcs() {
        let s = dram_shape_for(32 << 20);
        assert_eq!((s.c, s.h, s.w), (64, 120, 120));
        assert!(8 * s.len() >= 4 * (32 << 20));
        assert!(8 * (s.len() - s.chw()) < 4 * (32 << 20));
        assert_eq!(s.n, 19);
    }
}
