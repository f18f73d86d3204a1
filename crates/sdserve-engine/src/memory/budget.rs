//! How much memory this process may use, and who says so.
//!
//! A Stable Diffusion server that allocates past its container's limit is
//! killed by the kernel with no log line (issue 8), so the budget is the
//! smallest of every limit we can discover: the operator's `--memory-limit`,
//! the cgroup's memory limit (v2 and v1), and what the kernel says is available
//! right now (plus what we already hold). On CUDA the GPU-sharing systems'
//! own caps (HAMi, Alibaba cGPU, MPS) and the driver's free memory count.
//!
//! Everything that reads the machine is a thin wrapper over a pure parser that
//! takes file contents or environment strings as arguments, so the parsers are
//! tested without depending on the machine the tests run on.

use std::fmt;
use std::path::{Path, PathBuf};

/// One limit we found, and where it came from (shown to users verbatim).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    /// Bytes the source allows.
    pub bytes: u64,
    /// `--memory-limit`, `cgroup v2 memory.max (/sys/fs/cgroup/...)`, `MemAvailable`...
    pub source: String,
}

/// The smallest of the candidates: what the plan may use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Budget {
    /// Bytes allowed.
    pub bytes: u64,
    /// Which candidate set it.
    pub source: String,
    /// Every limit found, for the logs.
    pub candidates: Vec<Candidate>,
}

impl Budget {
    /// The smallest candidate; `None` when there is none.
    pub fn smallest(candidates: Vec<Candidate>) -> Option<Budget> {
        let best = candidates.iter().min_by_key(|c| c.bytes)?.clone();
        Some(Budget {
            bytes: best.bytes,
            source: best.source,
            candidates,
        })
    }
}

/// A size string that is not `8G`, `8GiB`, `512M`, `512MiB`, `4096k` or plain bytes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid size {input:?}: expected bytes or a number with K, M, G or T (binary: 1K = 1024), e.g. 8G, 8GiB, 512M")]
pub struct SizeError {
    /// What was given.
    pub input: String,
}

/// Parses `8G`, `8GiB`, `8gb`, `512M`, `1.5G`, `4096k` or `1234` (bytes).
/// Suffixes are binary (1K = 1024), as docker's `--memory` and HAMi read them:
/// limits are set in those tools' units and copied here.
pub fn parse_size(input: &str) -> Result<u64, SizeError> {
    let err = || SizeError {
        input: input.to_string(),
    };
    let s = input.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    let shift = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        "t" | "tb" | "tib" => 40,
        _ => return Err(err()),
    };
    if number.is_empty() {
        return Err(err());
    }
    if let Ok(n) = number.parse::<u64>() {
        return n.checked_mul(1u64 << shift).ok_or_else(err);
    }
    let f: f64 = number.parse().map_err(|_| err())?;
    let bytes = f * (1u64 << shift) as f64;
    if !bytes.is_finite() || bytes < 0.0 || bytes >= u64::MAX as f64 || shift == 0 {
        return Err(err());
    }
    Ok(bytes as u64)
}

/// Bytes in binary units with one decimal: `4.0 GiB`, `640.0 MiB`, `512 B`.
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// Above this a cgroup v1 `memory.limit_in_bytes` means "unlimited" (the
/// kernel writes `PAGE_COUNTER_MAX * page size`, 0x7FFFFFFFFFFFF000 on 64-bit).
const CGROUP_V1_UNLIMITED: u64 = 1 << 62;

/// The process's cgroup paths, from `/proc/self/cgroup`'s contents: the v2
/// path (`0::/path`) and the v1 memory controller's path (`N:memory:/path`
/// or a comma list naming `memory`).
pub fn parse_proc_cgroup(contents: &str) -> (Option<String>, Option<String>) {
    let mut v2 = None;
    let mut v1_memory = None;
    for line in contents.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(id), Some(controllers), Some(path)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        if id == "0" && controllers.is_empty() {
            v2 = Some(path.to_string());
        } else if controllers.split(',').any(|c| c == "memory") {
            v1_memory = Some(path.to_string());
        }
    }
    (v2, v1_memory)
}

/// A cgroup v2 `memory.max` value: bytes, or `None` for `max`/garbage.
pub fn parse_memory_max(contents: &str) -> Option<u64> {
    let s = contents.trim();
    if s == "max" {
        return None;
    }
    s.parse().ok()
}

/// A cgroup v1 `memory.limit_in_bytes` value: bytes, or `None` when it is
/// the kernel's "unlimited" (a huge page-aligned number) or garbage.
pub fn parse_limit_in_bytes(contents: &str) -> Option<u64> {
    let n: u64 = contents.trim().parse().ok()?;
    (n < CGROUP_V1_UNLIMITED).then_some(n)
}

/// `(MemAvailable, our VmRSS)` in bytes from `/proc/meminfo` and `/proc/self/status`.
pub fn parse_kib_field(contents: &str, field: &str) -> Option<u64> {
    contents.lines().find_map(|line| {
        let rest = line.strip_prefix(field)?.strip_prefix(':')?;
        let kib: u64 = rest.trim().trim_end_matches("kB").trim().parse().ok()?;
        kib.checked_mul(1024)
    })
}

/// The directories whose limit applies to a process in cgroup `path` under
/// `root`: the cgroup itself, then each parent up to `root`.
fn walk_up(root: &Path, path: &str) -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    let mut rel = PathBuf::from(path.trim_start_matches('/'));
    loop {
        dirs.push(root.join(&rel));
        if !rel.pop() {
            break;
        }
    }
    dirs
}

/// The smallest finite limit in the cgroup hierarchy, reading `file` in each
/// directory from the process's cgroup up to the root; names the file it came from.
fn smallest_in_hierarchy(
    root: &Path,
    path: &str,
    file: &str,
    parse: fn(&str) -> Option<u64>,
) -> Option<(u64, PathBuf)> {
    walk_up(root, path)
        .into_iter()
        .filter_map(|dir| {
            let f = dir.join(file);
            let bytes = parse(&std::fs::read_to_string(&f).ok()?)?;
            Some((bytes, f))
        })
        .min_by_key(|(bytes, _)| *bytes)
}

/// Where the host's files are (tests point it at a fake tree).
#[derive(Debug, Clone)]
pub struct HostPaths {
    /// `/proc/self/cgroup`.
    pub proc_cgroup: PathBuf,
    /// `/proc/meminfo`.
    pub meminfo: PathBuf,
    /// `/proc/self/status`.
    pub self_status: PathBuf,
    /// The cgroup v2 mount (`/sys/fs/cgroup`, or `/sys/fs/cgroup/unified` on hybrid hosts).
    pub cgroup2_roots: Vec<PathBuf>,
    /// The cgroup v1 memory controller's mount.
    pub cgroup1_memory: PathBuf,
}

impl Default for HostPaths {
    fn default() -> Self {
        Self {
            proc_cgroup: "/proc/self/cgroup".into(),
            meminfo: "/proc/meminfo".into(),
            self_status: "/proc/self/status".into(),
            cgroup2_roots: vec!["/sys/fs/cgroup".into(), "/sys/fs/cgroup/unified".into()],
            cgroup1_memory: "/sys/fs/cgroup/memory".into(),
        }
    }
}

/// This process's resident memory, if the kernel says.
pub fn current_rss(paths: &HostPaths) -> Option<u64> {
    parse_kib_field(&std::fs::read_to_string(&paths.self_status).ok()?, "VmRSS")
}

/// The process's peak resident size so far (`VmHWM`), to compare with the plan.
pub fn peak_rss(paths: &HostPaths) -> Option<u64> {
    parse_kib_field(&std::fs::read_to_string(&paths.self_status).ok()?, "VmHWM")
}

/// The CPU-side limits: `--memory-limit`, cgroup v2 and v1, MemAvailable + our RSS.
pub fn host_candidates(memory_limit: Option<u64>, paths: &HostPaths) -> Vec<Candidate> {
    let mut out = Vec::new();
    if let Some(bytes) = memory_limit {
        out.push(Candidate {
            bytes,
            source: "--memory-limit".into(),
        });
    }
    let (v2, v1) = std::fs::read_to_string(&paths.proc_cgroup)
        .map(|c| parse_proc_cgroup(&c))
        .unwrap_or((None, None));
    if let Some(path) = v2 {
        for root in &paths.cgroup2_roots {
            if !root.join("cgroup.controllers").exists() {
                continue;
            }
            if let Some((bytes, file)) =
                smallest_in_hierarchy(root, &path, "memory.max", parse_memory_max)
            {
                out.push(Candidate {
                    bytes,
                    source: format!("cgroup v2 memory.max ({})", file.display()),
                });
                break;
            }
        }
    }
    if let Some(path) = v1 {
        if let Some((bytes, file)) = smallest_in_hierarchy(
            &paths.cgroup1_memory,
            &path,
            "memory.limit_in_bytes",
            parse_limit_in_bytes,
        ) {
            out.push(Candidate {
                bytes,
                source: format!("cgroup v1 memory.limit_in_bytes ({})", file.display()),
            });
        }
    }
    let available = std::fs::read_to_string(&paths.meminfo)
        .ok()
        .and_then(|m| parse_kib_field(&m, "MemAvailable"));
    if let Some(available) = available {
        let ours = current_rss(paths).unwrap_or(0);
        out.push(Candidate {
            bytes: available.saturating_add(ours),
            source: "MemAvailable".into(),
        });
    }
    out
}

/// The GPU-sharing systems' caps for CUDA device `index`, from environment
/// variables (`var` looks one up; tests pass a map):
/// HAMi's `CUDA_DEVICE_MEMORY_LIMIT_<i>` (else `CUDA_DEVICE_MEMORY_LIMIT`),
/// Alibaba cGPU's `ALIYUN_COM_GPU_MEM_CONTAINER` (whole GiB) and MPS's
/// `CUDA_MPS_PINNED_DEVICE_MEM_LIMIT` (`0=1G,1=2G`). A value that does not
/// parse is reported, not ignored: the operator meant to set a limit.
pub fn gpu_env_candidates(
    index: usize,
    var: impl Fn(&str) -> Option<String>,
) -> Result<Vec<Candidate>, EnvError> {
    let mut out = Vec::new();
    let per_device = format!("CUDA_DEVICE_MEMORY_LIMIT_{index}");
    for name in [per_device.as_str(), "CUDA_DEVICE_MEMORY_LIMIT"] {
        if let Some(value) = var(name) {
            let bytes = parse_size(&value).map_err(|_| EnvError::new(name, &value))?;
            out.push(Candidate {
                bytes,
                source: format!("{name} (HAMi)"),
            });
            break;
        }
    }
    let cgpu = "ALIYUN_COM_GPU_MEM_CONTAINER";
    if let Some(value) = var(cgpu) {
        let gib: u64 = value
            .trim()
            .parse()
            .map_err(|_| EnvError::new(cgpu, &value))?;
        out.push(Candidate {
            bytes: gib.saturating_mul(1 << 30),
            source: format!("{cgpu} (Alibaba cGPU)"),
        });
    }
    let mps = "CUDA_MPS_PINNED_DEVICE_MEM_LIMIT";
    if let Some(value) = var(mps) {
        if let Some(bytes) =
            parse_mps_limit(&value, index).map_err(|_| EnvError::new(mps, &value))?
        {
            out.push(Candidate {
                bytes,
                source: format!("{mps} (CUDA MPS)"),
            });
        }
    }
    Ok(out)
}

/// MPS's `CUDA_MPS_PINNED_DEVICE_MEM_LIMIT`: `0=1G,1=2G`; the limit for
/// `index`, `None` when that device has none.
pub fn parse_mps_limit(value: &str, index: usize) -> Result<Option<u64>, SizeError> {
    let err = || SizeError {
        input: value.to_string(),
    };
    for entry in value.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        let (device, size) = entry.split_once('=').ok_or_else(err)?;
        let device: usize = device.trim().parse().map_err(|_| err())?;
        let bytes = parse_size(size)?;
        if device == index {
            return Ok(Some(bytes));
        }
    }
    Ok(None)
}

/// An environment variable that should hold a memory limit but does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("environment variable {name}={value:?} is not a memory size")]
pub struct EnvError {
    /// The variable.
    pub name: String,
    /// Its value.
    pub value: String,
}

impl EnvError {
    fn new(name: &str, value: &str) -> Self {
        Self {
            name: name.into(),
            value: value.into(),
        }
    }
}

/// The CUDA driver's free memory on the current device, when built with
/// `cuda` and a context is current.
#[cfg(feature = "cuda")]
pub fn cuda_free_memory() -> Option<Candidate> {
    let (free, _total) = candle_core::cuda_backend::cudarc::driver::result::mem_get_info().ok()?;
    Some(Candidate {
        bytes: free as u64,
        source: "cudaMemGetInfo free".into(),
    })
}

/// Without `cuda` there is no device memory to ask about.
#[cfg(not(feature = "cuda"))]
pub fn cuda_free_memory() -> Option<Candidate> {
    None
}

impl fmt::Display for Budget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", human_bytes(self.bytes), self.source)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn sizes_parse_in_binary_units() {
        assert_eq!(parse_size("8G"), Ok(8 << 30));
        assert_eq!(parse_size("8GiB"), Ok(8 << 30));
        assert_eq!(parse_size("8gb"), Ok(8 << 30));
        assert_eq!(parse_size("512M"), Ok(512 << 20));
        assert_eq!(parse_size("5000m"), Ok(5000 << 20));
        assert_eq!(parse_size("4096k"), Ok(4 << 20));
        assert_eq!(parse_size("1.5G"), Ok(3 << 29));
        assert_eq!(parse_size("123456"), Ok(123_456));
        assert_eq!(parse_size(" 2T "), Ok(2 << 40));
        for bad in [
            "",
            "G",
            "8X",
            "-1G",
            "1.5",
            "8 GiBs",
            "99999999999999999999G",
            "0x10",
        ] {
            let e = parse_size(bad).unwrap_err();
            assert!(e.to_string().contains("8GiB"), "{bad}: {e}");
        }
    }

    #[test]
    fn human_bytes_uses_binary_units() {
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(4 << 30), "4.0 GiB");
        assert_eq!(human_bytes(640 << 20), "640.0 MiB");
        assert_eq!(human_bytes((9 << 30) + (1 << 29)), "9.5 GiB");
    }

    #[test]
    fn proc_cgroup_gives_v2_and_v1_memory_paths() {
        let hybrid = "9:name=systemd:/\n4:memory:/process_api/abc\n3:cpu,cpuacct:/x\n0::/\n";
        assert_eq!(
            parse_proc_cgroup(hybrid),
            (Some("/".into()), Some("/process_api/abc".into()))
        );
        let v2 = "0::/system.slice/sdserve.service\n";
        assert_eq!(
            parse_proc_cgroup(v2),
            (Some("/system.slice/sdserve.service".into()), None)
        );
        let combined = "5:cpuacct,memory:/docker/1\n";
        assert_eq!(
            parse_proc_cgroup(combined),
            (None, Some("/docker/1".into()))
        );
        assert_eq!(parse_proc_cgroup("garbage\n"), (None, None));
    }

    #[test]
    fn cgroup_limit_files_parse_and_unlimited_is_none() {
        assert_eq!(parse_memory_max("max\n"), None);
        assert_eq!(parse_memory_max("1073741824\n"), Some(1 << 30));
        assert_eq!(parse_memory_max("lots"), None);
        assert_eq!(parse_limit_in_bytes("9223372036854771712\n"), None);
        assert_eq!(parse_limit_in_bytes("536870912\n"), Some(512 << 20));
    }

    #[test]
    fn meminfo_fields_are_kib() {
        let meminfo =
            "MemTotal:       24000000 kB\nMemFree:  100 kB\nMemAvailable:   22000000 kB\n";
        assert_eq!(
            parse_kib_field(meminfo, "MemAvailable"),
            Some(22_000_000 * 1024)
        );
        assert_eq!(parse_kib_field(meminfo, "MemFre"), None);
        assert_eq!(
            parse_kib_field("VmRSS:\t  2048 kB\n", "VmRSS"),
            Some(2 << 20)
        );
    }

    /// A fake host: v2 hierarchy with a tighter parent, a v1 limit, meminfo.
    #[test]
    fn host_candidates_take_the_smallest_limit_up_the_hierarchy() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let w = |p: &str, s: &str| {
            let p = root.join(p);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, s).unwrap();
        };
        w("proc_cgroup", "4:memory:/pod/c\n0::/kube/pod/c\n");
        w("meminfo", "MemAvailable: 1048576 kB\n");
        w("status", "VmRSS: 1024 kB\n");
        w("v2/cgroup.controllers", "cpu memory\n");
        w("v2/kube/pod/c/memory.max", "max\n");
        w("v2/kube/pod/memory.max", "3221225472\n");
        w("v2/kube/memory.max", "4294967296\n");
        w("v1/pod/c/memory.limit_in_bytes", "9223372036854771712\n");
        w("v1/pod/memory.limit_in_bytes", "2147483648\n");
        let paths = HostPaths {
            proc_cgroup: root.join("proc_cgroup"),
            meminfo: root.join("meminfo"),
            self_status: root.join("status"),
            cgroup2_roots: vec![root.join("missing"), root.join("v2")],
            cgroup1_memory: root.join("v1"),
        };
        let c = host_candidates(Some(5 << 30), &paths);
        assert_eq!(c.len(), 4, "{c:?}");
        assert_eq!(c[0].source, "--memory-limit");
        assert_eq!(c[1].bytes, 3 << 30);
        assert!(
            c[1].source.starts_with("cgroup v2 memory.max ("),
            "{}",
            c[1].source
        );
        assert!(
            c[1].source.contains("kube/pod/memory.max"),
            "{}",
            c[1].source
        );
        assert_eq!(c[2].bytes, 2 << 30);
        assert!(
            c[2].source.contains("v1/pod/memory.limit_in_bytes"),
            "{}",
            c[2].source
        );
        assert_eq!(
            (c[3].bytes, c[3].source.as_str()),
            ((1 << 30) + (1 << 20), "MemAvailable")
        );
        let b = Budget::smallest(c).unwrap();
        assert_eq!(b.bytes, (1 << 30) + (1 << 20));
        assert_eq!(b.source, "MemAvailable");
        assert!(Budget::smallest(vec![]).is_none());
    }

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let m: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| m.get(k).cloned()
    }

    #[test]
    fn gpu_sharing_env_vars_give_per_device_caps() {
        let c = gpu_env_candidates(
            1,
            env(&[
                ("CUDA_DEVICE_MEMORY_LIMIT", "8g"),
                ("CUDA_DEVICE_MEMORY_LIMIT_1", "5000m"),
                ("ALIYUN_COM_GPU_MEM_CONTAINER", "6"),
                ("CUDA_MPS_PINNED_DEVICE_MEM_LIMIT", "0=1G,1=2G"),
            ]),
        )
        .unwrap();
        assert_eq!(
            c,
            vec![
                Candidate {
                    bytes: 5000 << 20,
                    source: "CUDA_DEVICE_MEMORY_LIMIT_1 (HAMi)".into()
                },
                Candidate {
                    bytes: 6 << 30,
                    source: "ALIYUN_COM_GPU_MEM_CONTAINER (Alibaba cGPU)".into()
                },
                Candidate {
                    bytes: 2 << 30,
                    source: "CUDA_MPS_PINNED_DEVICE_MEM_LIMIT (CUDA MPS)".into()
                },
            ]
        );
        let c = gpu_env_candidates(0, env(&[("CUDA_DEVICE_MEMORY_LIMIT", "8g")])).unwrap();
        assert_eq!(c[0].bytes, 8 << 30);
        assert!(gpu_env_candidates(0, env(&[])).unwrap().is_empty());
        let c = gpu_env_candidates(3, env(&[("CUDA_MPS_PINNED_DEVICE_MEM_LIMIT", "0=1G")]));
        assert!(c.unwrap().is_empty());
        for (k, v) in [
            ("CUDA_DEVICE_MEMORY_LIMIT", "lots"),
            ("ALIYUN_COM_GPU_MEM_CONTAINER", "6.5G"),
            ("CUDA_MPS_PINNED_DEVICE_MEM_LIMIT", "1G"),
        ] {
            let e = gpu_env_candidates(0, env(&[(k, v)])).unwrap_err();
            assert_eq!(e.name, k);
        }
    }

    #[test]
    fn mps_limits_name_devices() {
        assert_eq!(parse_mps_limit("0=1G,1=512M", 1), Ok(Some(512 << 20)));
        assert_eq!(parse_mps_limit("0=1G", 0), Ok(Some(1 << 30)));
        assert_eq!(parse_mps_limit("0=1G", 2), Ok(None));
        assert!(parse_mps_limit("x=1G", 0).is_err());
        assert!(parse_mps_limit("0=lots", 0).is_err());
    }
}
