//! Fuzzing the parsers that read what clients send: the first packet (SSLRequest, GSSENCRequest,
//! CancelRequest, StartupMessage), message framing, the transaction-mode rewriter, and the
//! session-mode hot loop (sync points, session-state tracking) as a whole. Each runs generated
//! inputs (see `fuzz/generate.rs`) split into random chunks and must never panic, never hang,
//! (a watchdog ends the run when one input takes over 10 s), and stay within a memory bound
//! proportional to its input; on well-formed input the framing
//! and the rewriter must also be exact (every message seen once, output well framed, every
//! sync point counted).
//!
//! The suite runs a short run (`FUZZ_INPUTS`, default 20,000 per target). The long run:
//!
//! ```sh
//! FUZZ_INPUTS=1000000 FUZZ_SEED=$RANDOM cargo test --release --test fuzz_parsers -- --nocapture
//! ```
//!
//! A failure prints the target, the seed and the input's number: `FUZZ_SEED=<seed>` and
//! `FUZZ_ONLY=<number>` replay that one input.

#[path = "fuzz/generate.rs"]
mod generate;
#[path = "fuzz/memory.rs"]
mod memory;

use std::panic::AssertUnwindSafe;
use std::time::{Duration, Instant};

use generate::Generator;
use rds_iam_sidecar::forward::prepared::{ClientRewriter, ClientStatements, Plan};
use rds_iam_sidecar::protocol::framing::{FrameScanner, FrameVisitor};
use rds_iam_sidecar::protocol::startup::{InitialPacket, read_initial_packet};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[global_allocator]
static ALLOCATOR: memory::Counting = memory::Counting;

/// Inputs per target.
fn inputs() -> u64 {
    std::env::var("FUZZ_INPUTS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(20_000)
}

fn seed() -> u64 {
    std::env::var("FUZZ_SEED")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0x5eed)
}

/// What one input did, for the run's report.
#[derive(Default)]
struct Tally {
    accepted: u64,
    rejected: u64,
    /// Largest memory peak above the start of an input, in bytes.
    peak: usize,
}

/// Runs `target` on every input, each from its own generator seeded by (seed, number); stops
/// with the seed and number of the first input that panics, overruns its memory bound, or
/// takes over 2 s.
fn run(name: &str, target: impl Fn(&mut Generator) -> (bool, usize)) -> Tally {
    let (seed, count) = (seed(), inputs());
    let only: Option<u64> = std::env::var("FUZZ_ONLY").ok().and_then(|n| n.parse().ok());
    let mut tally = Tally::default();
    let started = Instant::now();
    let watchdog = Watchdog::start(name, seed);
    for number in only.map_or(0..count, |n| n..n + 1) {
        watchdog.at(number);
        let mut generator = Generator::new(seed ^ number.wrapping_mul(0x9e37_79b9_7f4a_7c15));
        let input_started = Instant::now();
        let measured = memory::measure(|| {
            std::panic::catch_unwind(AssertUnwindSafe(|| target(&mut generator)))
        });
        let (result, peak) = measured;
        let Ok((accepted, input_len)) = result else {
            panic!("{name}: input {number} panicked (replay: FUZZ_SEED={seed} FUZZ_ONLY={number})");
        };
        let bound = 8 * input_len + 1024 * 1024;
        assert!(
            peak <= bound,
            "{name}: input {number} peaked at {peak} bytes for {input_len} input bytes \
             (replay: FUZZ_SEED={seed} FUZZ_ONLY={number})"
        );
        assert!(
            input_started.elapsed() < Duration::from_secs(2),
            "{name}: input {number} took {:?} (replay: FUZZ_SEED={seed} FUZZ_ONLY={number})",
            input_started.elapsed()
        );
        tally.peak = tally.peak.max(peak);
        if accepted {
            tally.accepted += 1;
        } else {
            tally.rejected += 1;
        }
    }
    println!(
        "{name}: {} inputs (seed {seed}) in {:.1?}: {} accepted, {} rejected, largest memory peak {} bytes",
        tally.accepted + tally.rejected,
        started.elapsed(),
        tally.accepted,
        tally.rejected,
        tally.peak
    );
    tally
}

/// Ends the process when one input runs for over 10 s: a loop that never ends would otherwise
/// hang the suite instead of failing it with the input's number.
struct Watchdog {
    /// The input running now, plus one (0: none yet); `u64::MAX` when the run is over.
    input: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl Watchdog {
    fn start(name: &str, seed: u64) -> Self {
        use std::sync::atomic::Ordering;
        let input = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let watched = input.clone();
        let name = name.to_owned();
        std::thread::spawn(move || {
            let mut last = 0;
            loop {
                std::thread::sleep(Duration::from_secs(10));
                let now = watched.load(Ordering::SeqCst);
                if now == u64::MAX {
                    return;
                }
                if now != 0 && now == last {
                    eprintln!(
                        "{name}: input {} has run for over 10 s (replay: FUZZ_SEED={seed} FUZZ_ONLY={})",
                        now - 1,
                        now - 1
                    );
                    std::process::abort();
                }
                last = now;
            }
        });
        Self { input }
    }

    fn at(&self, number: u64) {
        self.input
            .store(number + 1, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        self.input
            .store(u64::MAX, std::sync::atomic::Ordering::SeqCst);
    }
}

/// Both outcomes must occur in a long enough run, or the generator tests nothing.
fn assert_both_outcomes(name: &str, tally: &Tally) {
    if only_one_input() || tally.accepted + tally.rejected < 1000 {
        return;
    }
    assert!(
        tally.accepted > 0 && tally.rejected > 0,
        "{name}: {} accepted, {} rejected: the generator is lopsided",
        tally.accepted,
        tally.rejected
    );
}

fn only_one_input() -> bool {
    std::env::var("FUZZ_ONLY").is_ok()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime")
}

#[test]
fn first_packets() {
    let runtime = runtime();
    let tally = run("first packets", |generator| {
        let packet = generator.initial_packet();
        let mut reader = &packet[..];
        let read = runtime.block_on(read_initial_packet(&mut reader));
        if let Ok(InitialPacket::Startup(request)) = &read {
            assert!(request.parameters().len() <= packet.len());
        }
        (read.is_ok(), packet.len())
    });
    assert_both_outcomes("first packets", &tally);
}

/// Records every message the scanner walks over, bodies included.
#[derive(Default)]
struct Recorder {
    messages: Vec<(u8, Vec<u8>)>,
}

impl FrameVisitor for Recorder {
    fn header(&mut self, _tag: u8, body_len: usize, _start: isize) -> bool {
        body_len <= rds_iam_sidecar::protocol::framing::MAX_CAPTURE
    }

    fn message(&mut self, tag: u8, body: &[u8], _end: usize) {
        self.messages.push((tag, body.to_vec()));
    }
}

fn framed(messages: &[(u8, Vec<u8>)]) -> Vec<u8> {
    messages
        .iter()
        .flat_map(|(tag, body)| rds_iam_sidecar::protocol::framing::message(*tag, body))
        .collect()
}

#[test]
fn framing() {
    let tally = run("framing", |generator| {
        // Any bytes: never a panic.
        let stream = generator.message_stream();
        let mut scanner = FrameScanner::new();
        let mut recorder = Recorder::default();
        let accepted = generator
            .chunks(&stream)
            .into_iter()
            .all(|chunk| scanner.scan(chunk, &mut recorder).is_ok());
        // Well-formed bytes: every message seen once, whole, however the bytes were cut.
        let messages = generator.well_formed_messages();
        let bytes = framed(&messages);
        let mut scanner = FrameScanner::new();
        let mut recorder = Recorder::default();
        for chunk in generator.chunks(&bytes) {
            scanner
                .scan(chunk, &mut recorder)
                .expect("well-formed input");
        }
        assert!(scanner.at_boundary());
        assert_eq!(recorder.messages, messages);
        (accepted, stream.len() + bytes.len())
    });
    assert_both_outcomes("framing", &tally);
}

/// Feeds `bytes` to a fresh rewriter in the generator's chunks (with `copy_in`, the server in
/// copy-in mode for every other chunk, so that CopyDone and CopyFail forget the Syncs before
/// them); the output, the sync points counted less those forgotten, and whether every chunk
/// was accepted.
fn rewrite(generator: &mut Generator, bytes: &[u8], copy_in: bool) -> (Vec<u8>, u32, bool) {
    let mut rewriter = ClientRewriter::new();
    let mut statements = ClientStatements::default();
    let prepared =
        std::sync::Mutex::new(rds_iam_sidecar::forward::prepared::ServerStatements::default());
    let plan = Plan::default();
    let mut out = Vec::new();
    let mut sync_points = 0;
    for (i, chunk) in generator.chunks(bytes).into_iter().enumerate() {
        let in_copy = copy_in && i % 2 == 1;
        match rewriter.process(chunk, &mut statements, &prepared, &plan, &mut out, in_copy) {
            Ok(report) => {
                sync_points += report.sync_points;
                sync_points -= report.ignored_syncs;
                if report.terminated {
                    break;
                }
            }
            Err(_) => return (out, sync_points, false),
        }
    }
    (out, sync_points, true)
}

#[test]
fn transaction_mode_rewriter() {
    let tally = run("transaction-mode rewriter", |generator| {
        let stream = generator.message_stream();
        let (_, _, accepted) = rewrite(generator, &stream, true);
        // Well-formed input: accepted, rewritten into well-framed messages, every sync point
        // before Terminate counted.
        let messages = generator.well_formed_messages();
        let bytes = framed(&messages);
        let (out, sync_points, ok) = rewrite(generator, &bytes, false);
        assert!(ok, "well-formed input rejected");
        let until_terminate = messages.iter().take_while(|(tag, _)| *tag != b'X');
        let expected = until_terminate
            .filter(|(tag, _)| matches!(tag, b'Q' | b'S' | b'F'))
            .count();
        assert_eq!(sync_points as usize, expected);
        let mut scanner = FrameScanner::new();
        let mut recorder = Recorder::default();
        scanner
            .scan(&out, &mut recorder)
            .expect("output well framed");
        assert!(scanner.at_boundary(), "output ends on a message boundary");
        (accepted, stream.len() + bytes.len())
    });
    assert_both_outcomes("transaction-mode rewriter", &tally);
}

#[test]
fn session_mode_hot_loop() {
    let runtime = runtime();
    let tally = run("session-mode hot loop", |generator| {
        let stream = generator.message_stream();
        let chunks: Vec<Vec<u8>> = generator
            .chunks(&stream)
            .into_iter()
            .map(<[u8]>::to_vec)
            .collect();
        let outcome = runtime.block_on(async {
            let (client, mut client_end) = tokio::io::duplex(64 * 1024);
            let (server, mut server_end) = tokio::io::duplex(64 * 1024);
            let feed = async {
                for chunk in &chunks {
                    if client_end.write_all(chunk).await.is_err() {
                        break;
                    }
                }
                let _ = client_end.shutdown().await;
                // Whatever the sidecar says to the client (an 08P01), read to the end.
                let mut said = Vec::new();
                let _ = client_end.read_to_end(&mut said).await;
            };
            let drain = async {
                let mut upstream = Vec::new();
                let _ = server_end.read_to_end(&mut upstream).await;
            };
            let hot_loop = rds_iam_sidecar::forward::forward(client, server, &[]);
            let ((outcome, _), (), ()) = tokio::time::timeout(Duration::from_secs(1), async {
                tokio::join!(hot_loop, feed, drain)
            })
            .await
            .expect("the hot loop ends when the client does");
            outcome
        });
        let accepted = !matches!(
            outcome,
            rds_iam_sidecar::forward::Outcome::ClientProtocolError
        );
        (accepted, stream.len())
    });
    assert_both_outcomes("session-mode hot loop", &tally);
}
