//! A loopback HTTP/1.1 server for the remote-shard tests: serves files from memory with `Range`
//! support, logs every request, and misbehaves on request — cuts connections mid-body, answers
//! slowly, fails with 500, or 404s.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How the server treats one path.
#[derive(Debug, Clone, Copy)]
pub enum Fault {
    /// The first `times` GETs send only `bytes` body bytes after claiming the whole length,
    /// then close the connection.
    CutAfter { bytes: usize, times: u32 },
    /// Every body is sent in 1 KiB pieces with this pause between them.
    Slow { pause_ms: u64 },
    /// The first `times` GETs answer 500.
    Fail { times: u32 },
    /// Never there.
    NotFound,
}

#[derive(Default)]
struct State {
    files: HashMap<String, Vec<u8>>,
    faults: HashMap<String, Fault>,
    /// (path, first byte asked for) of every GET, in arrival order.
    log: Vec<(String, u64)>,
    served: HashMap<String, u32>,
}

pub struct Server {
    pub base: String,
    state: Arc<Mutex<State>>,
}

impl Server {
    pub fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let base = format!("http://{}", listener.local_addr().expect("addr"));
        let state: Arc<Mutex<State>> = Arc::default();
        let s = state.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let s = s.clone();
                std::thread::spawn(move || {
                    let _ = serve(conn, &s);
                });
            }
        });
        Self { base, state }
    }

    pub fn put(&self, path: &str, bytes: Vec<u8>) {
        self.state.lock().unwrap().files.insert(path.into(), bytes);
    }

    pub fn fault(&self, path: &str, f: Fault) {
        self.state.lock().unwrap().faults.insert(path.into(), f);
    }

    /// The GETs so far: (path, first byte asked for).
    pub fn log(&self) -> Vec<(String, u64)> {
        self.state.lock().unwrap().log.clone()
    }

    pub fn clear_log(&self) {
        self.state.lock().unwrap().log.clear();
    }
}

fn serve(conn: TcpStream, state: &Mutex<State>) -> std::io::Result<()> {
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let path = line.split_whitespace().nth(1).unwrap_or("/").to_owned();
    let mut from = 0u64;
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h)? == 0 || h == "\r\n" {
            break;
        }
        let lower = h.to_lowercase();
        if let Some(r) = lower.strip_prefix("range: bytes=") {
            from = r.trim().trim_end_matches('-').parse().unwrap_or(0);
        }
    }
    let (body, fault) = {
        let mut st = state.lock().unwrap();
        st.log.push((path.clone(), from));
        let n = st.served.entry(path.clone()).or_default();
        *n += 1;
        let attempt = *n;
        let fault = match st.faults.get(&path).copied() {
            Some(Fault::CutAfter { bytes, times }) if attempt <= times => {
                Some(Fault::CutAfter { bytes, times })
            }
            Some(Fault::Fail { times }) if attempt <= times => Some(Fault::Fail { times }),
            Some(f @ (Fault::Slow { .. } | Fault::NotFound)) => Some(f),
            _ => None,
        };
        (st.files.get(&path).cloned(), fault)
    };
    let mut out = conn;
    let body = match (body, fault) {
        (_, Some(Fault::NotFound)) | (None, _) => {
            return out.write_all(
                b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
            );
        }
        (_, Some(Fault::Fail { .. })) => {
            return out.write_all(
                b"HTTP/1.1 500 Internal Server Error\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
            );
        }
        (Some(b), _) => b,
    };
    let from = (from as usize).min(body.len());
    let rest = &body[from..];
    let head = if from > 0 {
        format!(
            "HTTP/1.1 206 Partial Content\r\ncontent-length: {}\r\ncontent-range: bytes {from}-{}/{}\r\nconnection: close\r\n\r\n",
            rest.len(),
            body.len().saturating_sub(1),
            body.len()
        )
    } else {
        format!(
            "HTTP/1.1 200 OK\r\ncontent-length: {}\r\naccept-ranges: bytes\r\nconnection: close\r\n\r\n",
            rest.len()
        )
    };
    out.write_all(head.as_bytes())?;
    match fault {
        Some(Fault::CutAfter { bytes, .. }) => {
            out.write_all(&rest[..bytes.min(rest.len())])?;
            out.flush()?;
            out.shutdown(std::net::Shutdown::Both)
        }
        Some(Fault::Slow { pause_ms }) => {
            for piece in rest.chunks(1024) {
                out.write_all(piece)?;
                out.flush()?;
                std::thread::sleep(Duration::from_millis(pause_ms));
            }
            Ok(())
        }
        _ => out.write_all(rest),
    }
}
