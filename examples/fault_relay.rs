//! The tests' fault-injecting TCP relay as a program, for benchmarks that break the path
//! between a sidecar and its upstream from a script (`benches/soak.sh`):
//!
//! ```sh
//! cargo run --release --example fault_relay -- 127.0.0.1:5432
//! ```
//!
//! prints `LISTENING <port>` (an ephemeral loopback port relaying to the target), then reads
//! commands, one per line, from stdin: `stall` (connections open now hang), `black-hole`
//! (every byte is swallowed), `slow <ms>` (every chunk waits), `reset` (every open connection
//! gets a RST), `heal` (bytes pass again). Each is answered `OK <command>`. It exits when stdin
//! closes.

#[allow(dead_code)] // the tests use more of it than this program
#[path = "../tests/support/fault_relay.rs"]
mod fault_relay;

use std::time::Duration;

use fault_relay::FaultRelay;
use tokio::io::{AsyncBufReadExt, BufReader};

#[tokio::main]
async fn main() -> Result<(), String> {
    let target = std::env::args()
        .nth(1)
        .ok_or("usage: fault_relay HOST:PORT")?
        .parse()
        .map_err(|e| format!("the target must be an IP address and port: {e}"))?;
    let relay = FaultRelay::start(target).await;
    println!("LISTENING {}", relay.addr.port());
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["stall"] => relay.stall(),
            ["black-hole"] => relay.black_hole(),
            ["heal"] => relay.heal(),
            ["reset"] => relay.reset(),
            ["slow", ms] => match ms.parse() {
                Ok(ms) => relay.slow(Duration::from_millis(ms)),
                Err(_) => {
                    println!("ERROR slow takes milliseconds");
                    continue;
                }
            },
            [] => continue,
            _ => {
                println!("ERROR unknown command: {line}");
                continue;
            }
        }
        println!("OK {line}");
    }
    Ok(())
}
