//! One module per subcommand.

pub mod generate;
pub mod healthcheck;
pub mod logging;
pub mod models;
pub mod serve;

/// `--memory-limit`: `8G`, `8GiB`, `512M` or plain bytes (binary units).
pub fn parse_memory_limit(s: &str) -> Result<u64, String> {
    match sdserve_engine::memory::parse_size(s) {
        Ok(0) => Err("the memory limit must be more than 0 bytes".into()),
        Ok(bytes) => Ok(bytes),
        Err(e) => Err(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn memory_limits_parse_with_units_and_refuse_garbage() {
        assert_eq!(super::parse_memory_limit("8G"), Ok(8 << 30));
        assert_eq!(super::parse_memory_limit("8GiB"), Ok(8 << 30));
        assert_eq!(super::parse_memory_limit("512M"), Ok(512 << 20));
        assert_eq!(super::parse_memory_limit("1000"), Ok(1000));
        assert!(super::parse_memory_limit("0").is_err());
        assert!(super::parse_memory_limit("lots")
            .unwrap_err()
            .contains("e.g. 8G, 8GiB, 512M"));
    }
}
