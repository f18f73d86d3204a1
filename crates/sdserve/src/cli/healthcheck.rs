//! `sdserve healthcheck`: the container health check. The image is `FROM
//! scratch` (no shell, no curl), so the binary probes itself: one HTTP/1.1
//! `GET /readyz` over a plain TCP connection to the address `serve` was
//! configured with (the same `SDSERVE_HOST`/`SDSERVE_PORT` variables), exit 0
//! on a 200 and 1 on anything else. Plain std: no async runtime to start
//! every few seconds.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::process::ExitCode;
use std::time::Duration;

/// The status line must arrive within this many bytes (a real one is ~20).
const MAX_STATUS_LINE: usize = 1024;

/// Flags of `sdserve healthcheck`.
#[derive(clap::Args, Debug)]
pub struct HealthcheckArgs {
    /// The server's address; an unspecified one (0.0.0.0, ::) probes loopback.
    #[arg(long, default_value = "127.0.0.1", env = "SDSERVE_HOST")]
    pub host: IpAddr,
    #[arg(long, default_value_t = 7860, env = "SDSERVE_PORT")]
    pub port: u16,
    /// Path to probe: /readyz (model loaded, not draining) or /livez (process up).
    #[arg(long, default_value = "/readyz")]
    pub path: String,
    /// Seconds for connecting, and again for the answer.
    #[arg(long, value_name = "SECS", default_value_t = 5)]
    pub timeout: u64,
}

/// Probes the server; prints one line saying what it found.
pub fn run(args: &HealthcheckArgs) -> ExitCode {
    let addr = SocketAddr::new(probe_host(args.host), args.port);
    let timeout = Duration::from_secs(args.timeout.max(1));
    match probe(addr, &args.path, timeout) {
        Ok(200) => {
            println!("{addr}{}: 200", args.path);
            ExitCode::SUCCESS
        }
        Ok(status) => {
            println!("{addr}{}: {status}", args.path);
            ExitCode::FAILURE
        }
        Err(error) => {
            println!("{addr}{}: {error}", args.path);
            ExitCode::FAILURE
        }
    }
}

/// A server bound to every address is reached on loopback.
fn probe_host(host: IpAddr) -> IpAddr {
    match host {
        IpAddr::V4(v4) if v4.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(v6) if v6.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        other => other,
    }
}

/// The HTTP status code of `GET path` at `addr`.
fn probe(addr: SocketAddr, path: &str, timeout: Duration) -> Result<u16, String> {
    if !path.starts_with('/') || path.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!("--path must be an absolute path, not {path:?}"));
    }
    let mut stream =
        TcpStream::connect_timeout(&addr, timeout).map_err(|e| format!("cannot connect: {e}"))?;
    stream
        .set_read_timeout(Some(timeout))
        .and_then(|()| stream.set_write_timeout(Some(timeout)))
        .map_err(|e| format!("cannot set timeouts: {e}"))?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream
        .write_all(request.as_bytes())
        .map_err(|e| format!("cannot send the request: {e}"))?;
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n") {
        if head.len() >= MAX_STATUS_LINE {
            return Err("no HTTP status line".into());
        }
        match stream.read(&mut byte) {
            Ok(0) => return Err("connection closed before a status line".into()),
            Ok(_) => head.push(byte[0]),
            Err(e) => return Err(format!("no answer: {e}")),
        }
    }
    parse_status_line(&String::from_utf8_lossy(&head))
}

/// `HTTP/1.1 200 OK` -> 200.
fn parse_status_line(line: &str) -> Result<u16, String> {
    let mut parts = line.split_whitespace();
    match (parts.next(), parts.next().map(str::parse::<u16>)) {
        (Some(version), Some(Ok(code))) if version.starts_with("HTTP/") => Ok(code),
        _ => Err(format!("not an HTTP status line: {:?}", line.trim_end())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    /// A one-shot server answering `reply` to the first connection; returns its address.
    fn serve_once(reply: &'static [u8]) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        std::thread::spawn(move || {
            if let Ok((mut conn, _)) = listener.accept() {
                let mut buf = [0u8; 512];
                let _ = conn.read(&mut buf);
                let _ = conn.write_all(reply);
            }
        });
        addr
    }

    #[test]
    fn a_200_is_healthy_and_other_codes_are_reported() {
        let ok = serve_once(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n");
        assert_eq!(probe(ok, "/readyz", Duration::from_secs(5)), Ok(200));
        let draining = serve_once(b"HTTP/1.1 503 Service Unavailable\r\n\r\n");
        assert_eq!(probe(draining, "/readyz", Duration::from_secs(5)), Ok(503));
    }

    #[test]
    fn garbage_silence_and_refusal_are_errors() {
        let garbage = serve_once(b"SSH-2.0-OpenSSH\r\n");
        let err = probe(garbage, "/readyz", Duration::from_secs(5)).unwrap_err();
        assert!(err.contains("not an HTTP status line"), "{err}");
        let closed = serve_once(b"");
        let err = probe(closed, "/readyz", Duration::from_secs(5)).unwrap_err();
        assert!(err.contains("closed"), "{err}");
        // A port nobody listens on: bind, note it, release it.
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("port");
        let err = probe(port, "/readyz", Duration::from_secs(5)).unwrap_err();
        assert!(err.contains("cannot connect"), "{err}");
    }

    #[test]
    fn bad_paths_are_refused_before_connecting() {
        let nowhere: SocketAddr = "127.0.0.1:9".parse().expect("addr");
        for path in ["readyz", "/a b", "/x\r\nHost: evil"] {
            let err = probe(nowhere, path, Duration::from_secs(1)).unwrap_err();
            assert!(err.contains("--path"), "{path:?}: {err}");
        }
    }

    #[test]
    fn unspecified_hosts_probe_loopback() {
        assert_eq!(
            probe_host("0.0.0.0".parse().expect("ip")),
            IpAddr::V4(Ipv4Addr::LOCALHOST)
        );
        assert_eq!(
            probe_host("::".parse().expect("ip")),
            IpAddr::V6(Ipv6Addr::LOCALHOST)
        );
        let other: IpAddr = "10.1.2.3".parse().expect("ip");
        assert_eq!(probe_host(other), other);
    }
}
