//! `bench transfer`: a large model's round trip over loopback gRPC, as a task goes down and an
//! update comes back (the `Federation` stream, in 1 MiB chunks, tensors decoded to `f32` at
//! each end), against raw loopback TCP moving the same bytes both ways, in the same run.

use std::pin::Pin;
use std::time::Instant;

use anyhow::Context;
use futures::{Stream, StreamExt};
use shoal_proto::chunk::{self, Assembler, CHUNK_BYTES};
use shoal_proto::v1::{
    self, client_message, coordinator_message,
    federation_client::FederationClient,
    federation_server::{Federation, FederationServer},
    ClientMessage, CoordinatorMessage,
};
use shoal_shared::tensor::{Tensor, Weights};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

/// Figures of one run, for the printout and tests.
#[derive(Debug, Clone)]
pub struct TransferFigures {
    pub params: usize,
    /// Bytes of one task (or update) on the wire.
    pub message_bytes: u64,
    /// Seconds for the raw TCP round trip of the same bytes (best of the repeats).
    pub tcp_secs: f64,
    /// Seconds for the gRPC round trip: task down, update back (best of the repeats).
    pub grpc_secs: f64,
}

/// Largest message either end of the benchmark takes whole (chunks are far smaller).
const LIMIT: usize = 64 << 20;

/// The coordinator's half: answers each update with a task carrying the same tensors, as a
/// round's next task carries the new model.
struct Echo;

type Out = Pin<Box<dyn Stream<Item = Result<CoordinatorMessage, Status>> + Send>>;

#[tonic::async_trait]
impl Federation for Echo {
    type ConnectStream = Out;

    async fn connect(
        &self,
        request: Request<Streaming<ClientMessage>>,
    ) -> Result<Response<Out>, Status> {
        let mut inbound = request.into_inner();
        let (tx, rx) = tokio::sync::mpsc::channel::<CoordinatorMessage>(16);
        tokio::spawn(async move {
            let mut chunks = Assembler::default();
            while let Ok(Some(m)) = inbound.message().await {
                let Some(client_message::Msg::Chunk(c)) = m.msg else {
                    continue;
                };
                let Ok(Some(whole)) = chunks.push(c, u64::MAX, "bench") else {
                    continue;
                };
                let Ok(ClientMessage {
                    msg: Some(client_message::Msg::Result(r)),
                }) = chunk::decode_client(whole)
                else {
                    return;
                };
                let Some(v1::task_result::Outcome::Fit(fit)) = r.outcome else {
                    return;
                };
                let Some(p) = fit.parameters else { return };
                // Decoded as the coordinator decodes an update.
                if shoal_proto::weights_from_wire(&p, usize::MAX).is_err() {
                    return;
                }
                let task = CoordinatorMessage {
                    msg: Some(coordinator_message::Msg::Task(v1::Task {
                        task_id: r.task_id,
                        parameters: Some(p),
                        ..Default::default()
                    })),
                };
                for piece in chunk::split_coordinator(task, CHUNK_BYTES) {
                    if tx.send(piece).await.is_err() {
                        return;
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx).map(Ok))))
    }
}

/// Measures and prints. `params`: the model's size in `f32` parameters.
pub async fn transfer(params: usize, repeats: u32) -> anyhow::Result<TransferFigures> {
    let data: Vec<f32> = (0..params).map(|i| (i % 1000) as f32 * 1e-3).collect();
    let weights = Weights::new(vec![Tensor::new("w", vec![params], data)?]);
    let wire = shoal_proto::weights_to_wire(&weights);
    let update = ClientMessage {
        msg: Some(client_message::Msg::Result(v1::TaskResult {
            task_id: "bench".into(),
            outcome: Some(v1::task_result::Outcome::Fit(v1::FitResult {
                parameters: Some(wire),
                num_examples: 1,
                ..Default::default()
            })),
            ..Default::default()
        })),
    };
    let message_bytes = prost::Message::encoded_len(&update) as u64;

    // gRPC: the coordinator's settings (no-delay listener, the default message limit).
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let stop = tokio_util::sync::CancellationToken::new();
    let server = tokio::spawn({
        let stop = stop.clone();
        tonic::transport::Server::builder()
            .add_service(
                FederationServer::new(Echo)
                    .max_decoding_message_size(LIMIT)
                    .max_encoding_message_size(LIMIT),
            )
            .serve_with_incoming_shutdown(
                tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
                stop.cancelled_owned(),
            )
    });
    let channel = shoal_client::endpoint(&format!("http://{addr}"))?
        .connect()
        .await
        .context("connecting to the benchmark's server")?;
    let mut client = FederationClient::new(channel)
        .max_decoding_message_size(LIMIT)
        .max_encoding_message_size(LIMIT);
    let (tx, rx) = tokio::sync::mpsc::channel::<ClientMessage>(16);
    let mut inbound = client.connect(ReceiverStream::new(rx)).await?.into_inner();
    let mut grpc_secs = f64::INFINITY;
    for _ in 0..repeats {
        let started = Instant::now();
        for piece in chunk::split_client(update.clone(), CHUNK_BYTES) {
            tx.send(piece)
                .await
                .context("the benchmark's stream closed")?;
        }
        let mut chunks = Assembler::default();
        let task = loop {
            let m = inbound
                .message()
                .await?
                .context("the benchmark's stream ended")?;
            if let Some(coordinator_message::Msg::Chunk(c)) = m.msg {
                if let Some(whole) = chunks.push(c, u64::MAX, "bench")? {
                    break chunk::decode_coordinator(whole)?;
                }
            }
        };
        let Some(coordinator_message::Msg::Task(t)) = task.msg else {
            anyhow::bail!("the benchmark's server sent no task");
        };
        // Decoded as a client decodes its task.
        let back = shoal_proto::weights_from_wire(
            t.parameters.as_ref().context("a task without parameters")?,
            usize::MAX,
        )?;
        grpc_secs = grpc_secs.min(started.elapsed().as_secs_f64());
        anyhow::ensure!(back == weights, "the model came back changed");
    }
    drop(tx);
    stop.cancel();
    let _ = server.await;

    // Raw TCP: the same bytes down and back, 4 MiB at a time, no framing.
    let bytes = message_bytes as usize;
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let echo = tokio::spawn(async move {
        let (mut s, _) = listener.accept().await?;
        s.set_nodelay(true)?;
        let mut buf = vec![0u8; bytes];
        for _ in 0..repeats {
            s.read_exact(&mut buf).await?;
            s.write_all(&buf).await?;
        }
        Ok::<_, std::io::Error>(())
    });
    let mut s = TcpStream::connect(addr).await?;
    s.set_nodelay(true)?;
    let out = vec![7u8; bytes];
    let mut back = vec![0u8; bytes];
    let mut tcp_secs = f64::INFINITY;
    for _ in 0..repeats {
        let started = Instant::now();
        let (mut r, mut w) = s.split();
        let (sent, got) = tokio::join!(
            async {
                for piece in out.chunks(CHUNK_BYTES) {
                    w.write_all(piece).await?;
                }
                Ok::<_, std::io::Error>(())
            },
            r.read_exact(&mut back)
        );
        sent?;
        got?;
        tcp_secs = tcp_secs.min(started.elapsed().as_secs_f64());
    }
    echo.await??;

    let f = TransferFigures {
        params,
        message_bytes,
        tcp_secs,
        grpc_secs,
    };
    let mb = |secs: f64| 2.0 * f.message_bytes as f64 / secs / 1e6;
    println!(
        "bench transfer  {} parameters ({:.1} MB a message), round trip (down and back) over loopback, best of {repeats}",
        f.params,
        f.message_bytes as f64 / 1e6
    );
    println!(
        "  raw TCP (baseline)                 {:>8.1} ms  {:>7.0} MB/s",
        f.tcp_secs * 1e3,
        mb(f.tcp_secs)
    );
    println!(
        "  gRPC stream, 1 MiB chunks, decoded {:>8.1} ms  {:>7.0} MB/s  ({:.0}% of raw TCP)",
        f.grpc_secs * 1e3,
        mb(f.grpc_secs),
        100.0 * f.tcp_secs / f.grpc_secs
    );
    Ok(f)
}
