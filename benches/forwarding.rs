//! Throughput of the forwarding hot loop over loopback sockets: messages/s for a stream of
//! small DataRow-sized messages (server → client) and MB/s for large COPY chunks
//! (client → server), with a plain and a TLS upstream side.
//!
//! `cargo bench --bench forwarding`

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use rds_iam_sidecar::forward::forward;
use rds_iam_sidecar::upstream::tls::TlsMode;
use rds_iam_sidecar::upstream::tls::client_config;
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::Runtime;
use tokio::sync::Mutex;

const ROWS_PER_BATCH: usize = 10_000;
const COPY_BYTES: usize = 16 * 1024 * 1024;
const COPY_CHUNK: usize = 64 * 1024;

type BoxedIo = Box<dyn Io>;
trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// app ⇄ [sidecar forward] ⇄ db, all on loopback; returns the app and db ends.
async fn chain(tls: bool) -> (TcpStream, BoxedIo) {
    let front = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let back = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let app = TcpStream::connect(front.local_addr().expect("addr"))
        .await
        .expect("connect");
    let (sidecar_client, _) = front.accept().await.expect("accept");
    let sidecar_server = TcpStream::connect(back.local_addr().expect("addr"))
        .await
        .expect("connect");
    let (db_tcp, _) = back.accept().await.expect("accept");
    for s in [&app, &sidecar_client, &sidecar_server, &db_tcp] {
        s.set_nodelay(true).expect("nodelay");
    }
    if !tls {
        tokio::spawn(async move { forward(sidecar_client, sidecar_server, &[]).await });
        return (app, Box::new(db_tcp));
    }
    let cert = rcgen::generate_simple_self_signed(vec!["db.bench".to_owned()]).expect("cert");
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(cert.signing_key.serialize_der()));
    let server_config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_no_client_auth()
    .with_single_cert(vec![cert.cert.der().clone()], key)
    .expect("server config");
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server_config));
    let connector = tokio_rustls::TlsConnector::from(
        client_config(TlsMode::Require, None)
            .expect("client config")
            .expect("tls"),
    );
    let name = ServerName::try_from("db.bench").expect("name");
    let (client_side, server_side) = tokio::join!(
        connector.connect(name, sidecar_server),
        acceptor.accept(db_tcp)
    );
    let client_side = client_side.expect("client handshake");
    let server_side = server_side.expect("server handshake");
    tokio::spawn(async move { forward(sidecar_client, client_side, &[]).await });
    (app, Box::new(server_side))
}

fn data_rows() -> Vec<u8> {
    // DataRow with 2 columns (an int4 and a 20-byte text): 39 bytes on the wire.
    let mut row = vec![b'D'];
    let body: Vec<u8> = [
        &2u16.to_be_bytes()[..],
        &4i32.to_be_bytes(),
        &42i32.to_be_bytes(),
        &20i32.to_be_bytes(),
        b"abcdefghijklmnopqrst",
    ]
    .concat();
    row.extend_from_slice(&(body.len() as u32 + 4).to_be_bytes());
    row.extend_from_slice(&body);
    let mut out = Vec::with_capacity(row.len() * ROWS_PER_BATCH + 6);
    for _ in 0..ROWS_PER_BATCH {
        out.extend_from_slice(&row);
    }
    out.extend_from_slice(&[b'Z', 0, 0, 0, 5, b'I']);
    out
}

fn copy_data() -> Vec<u8> {
    let mut out = Vec::with_capacity(COPY_BYTES + COPY_BYTES / COPY_CHUNK * 5);
    let chunk = vec![b'x'; COPY_CHUNK];
    for _ in 0..COPY_BYTES / COPY_CHUNK {
        out.push(b'd');
        out.extend_from_slice(&(COPY_CHUNK as u32 + 4).to_be_bytes());
        out.extend_from_slice(&chunk);
    }
    out
}

/// Sends `payload` from `from` and reads it completely at `to`, `iters` times.
async fn pump<W, R>(from: &mut W, to: &mut R, payload: &[u8], iters: u64) -> Duration
where
    W: AsyncWrite + Unpin + Send,
    R: AsyncRead + Unpin + Send,
{
    let mut sink = vec![0u8; 256 * 1024];
    let start = Instant::now();
    for _ in 0..iters {
        let write = async {
            from.write_all(payload).await.expect("write");
            from.flush().await.expect("flush");
        };
        let read = async {
            let mut left = payload.len();
            while left > 0 {
                let n = to.read(&mut sink).await.expect("read");
                assert!(n > 0, "stream closed");
                left -= n;
            }
        };
        tokio::join!(write, read);
    }
    start.elapsed()
}

fn bench_forwarding(c: &mut Criterion) {
    let runtime = Runtime::new().expect("runtime");
    let rows = data_rows();
    let copy = copy_data();

    let mut group = c.benchmark_group("forward_datarows");
    group.throughput(Throughput::Elements(ROWS_PER_BATCH as u64));
    for tls in [false, true] {
        let ends = Arc::new(Mutex::new(runtime.block_on(chain(tls))));
        let label = if tls {
            "tls_upstream"
        } else {
            "plain_upstream"
        };
        group.bench_function(BenchmarkId::from_parameter(label), |b| {
            b.to_async(&runtime).iter_custom(|iters| {
                let ends = ends.clone();
                let rows = rows.clone();
                async move {
                    let mut guard = ends.lock().await;
                    let (app, db) = &mut *guard;
                    pump(db, app, &rows, iters).await
                }
            })
        });
    }
    group.finish();

    let mut group = c.benchmark_group("forward_copy");
    group.throughput(Throughput::Bytes(copy.len() as u64));
    group.sample_size(20);
    for tls in [false, true] {
        let ends = Arc::new(Mutex::new(runtime.block_on(chain(tls))));
        let label = if tls {
            "tls_upstream"
        } else {
            "plain_upstream"
        };
        group.bench_function(BenchmarkId::from_parameter(label), |b| {
            b.to_async(&runtime).iter_custom(|iters| {
                let ends = ends.clone();
                let copy = copy.clone();
                async move {
                    let mut guard = ends.lock().await;
                    let (app, db) = &mut *guard;
                    pump(app, db, &copy, iters).await
                }
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench_forwarding);
criterion_main!(benches);
