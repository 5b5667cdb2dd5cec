//! The gRPC services: `Federation` (clients' streams) and `Jobs` (operators).
//!
//! Handlers translate between wire and domain and nothing more; errors become `tonic::Status`
//! through the one `From<Error>` mapping in `error.rs`.

use std::pin::Pin;
use std::sync::Arc;

use futures::{Stream, StreamExt};
use prost::Message;
use shoal_proto::v1::{
    client_message, coordinator_message, federation_server::Federation, jobs_server::Jobs,
    ClientMessage, CoordinatorMessage, Reject, Welcome,
};
use shoal_proto::{v1, PROTOCOL_VERSION};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use tracing::{info, warn, Instrument};

use crate::coordinator::Coordinator;
use crate::error::Error;
use crate::spec::JobSpec;

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// The `Federation` service.
#[derive(Debug, Clone)]
pub struct FederationService {
    coord: Arc<Coordinator>,
}

impl FederationService {
    pub fn new(coord: Arc<Coordinator>) -> Self {
        FederationService { coord }
    }
}

fn reject(reason: String) -> Response<BoxStream<CoordinatorMessage>> {
    let msg = CoordinatorMessage {
        msg: Some(coordinator_message::Msg::Reject(Reject {
            reason,
            coordinator_protocol_version: PROTOCOL_VERSION,
        })),
    };
    Response::new(Box::pin(futures::stream::iter([Ok(msg)])))
}

#[tonic::async_trait]
impl Federation for FederationService {
    type ConnectStream = BoxStream<CoordinatorMessage>;

    async fn connect(
        &self,
        request: Request<Streaming<ClientMessage>>,
    ) -> Result<Response<Self::ConnectStream>, Status> {
        let peer = request.remote_addr();
        let mut inbound = request.into_inner();
        let first = tokio::time::timeout(self.coord.config.hello_timeout, inbound.message()).await;
        let hello = match first {
            Err(_) => {
                warn!(?peer, "no Hello within the timeout");
                return Ok(reject(format!(
                    "expected Hello within {:?}",
                    self.coord.config.hello_timeout
                )));
            }
            Ok(Err(status)) => return Err(status),
            Ok(Ok(None)) => return Err(Status::cancelled("stream closed before Hello")),
            Ok(Ok(Some(ClientMessage {
                msg: Some(client_message::Msg::Hello(h)),
            }))) => h,
            Ok(Ok(Some(_))) => {
                warn!(?peer, "first message was not Hello");
                return Ok(reject("the first message must be Hello".into()));
            }
        };
        if hello.protocol_version != PROTOCOL_VERSION {
            warn!(?peer, client = %hello.client_name, theirs = hello.protocol_version, "protocol version mismatch");
            return Ok(reject(format!(
                "protocol version mismatch: client speaks {}, coordinator speaks {}",
                hello.protocol_version, PROTOCOL_VERSION
            )));
        }
        let name = hello.client_name.trim().to_string();
        if name.is_empty() || name.len() > 128 || name.chars().any(char::is_control) {
            return Ok(reject(
                "client_name must be 1 to 128 printable characters".into(),
            ));
        }
        let datasets: Vec<String> = hello.datasets.iter().map(|d| d.name.clone()).collect();
        let Some((session, rx)) = self.coord.registry.register(&name, hello.datasets, peer) else {
            return Err(Error::ShuttingDown.into());
        };
        info!(client = %name, ?peer, ?datasets, "client connected");

        // Reader: results and heartbeats until the stream ends; then the client is gone.
        let registry = self.coord.registry.clone();
        let span = tracing::info_span!("client", client = %name);
        let reader_name = name.clone();
        tokio::spawn(
            async move {
                loop {
                    match inbound.message().await {
                        Ok(Some(msg)) => {
                            let bytes = msg.encoded_len() as u64;
                            match msg.msg {
                                Some(client_message::Msg::Result(r)) => {
                                    let task = r.task_id.clone();
                                    if let Err(e) = registry.complete(&reader_name, session, r, bytes) {
                                        warn!(task, "result refused: {e}");
                                    }
                                }
                                Some(client_message::Msg::Heartbeat(_)) => {}
                                Some(client_message::Msg::Hello(_)) | None => {
                                    warn!("unexpected message after Hello; ignored")
                                }
                            }
                        }
                        Ok(None) => break,
                        Err(status) => {
                            info!("stream ended: {}", status.message());
                            break;
                        }
                    }
                }
                registry.unregister(&reader_name, session);
                info!("client disconnected");
            }
            .instrument(span),
        );

        let welcome = CoordinatorMessage {
            msg: Some(coordinator_message::Msg::Welcome(Welcome {
                client_id: name,
                protocol_version: PROTOCOL_VERSION,
                heartbeat_interval_ms: self.coord.config.heartbeat_interval.as_millis() as u32,
            })),
        };
        let shutdown = self.coord.shutdown_token().clone().cancelled_owned();
        let out = futures::stream::iter([Ok(welcome)])
            .chain(ReceiverStream::new(rx))
            .take_until(shutdown);
        Ok(Response::new(Box::pin(out)))
    }
}

/// The `Jobs` service.
#[derive(Debug, Clone)]
pub struct JobsService {
    coord: Arc<Coordinator>,
}

impl JobsService {
    pub fn new(coord: Arc<Coordinator>) -> Self {
        JobsService { coord }
    }
}

#[tonic::async_trait]
impl Jobs for JobsService {
    async fn submit(
        &self,
        request: Request<v1::SubmitRequest>,
    ) -> Result<Response<v1::JobInfo>, Status> {
        let req = request.into_inner();
        let spec = match req.format.as_str() {
            "" | "toml" => JobSpec::from_toml(&req.spec)?,
            "json" => JobSpec::from_json(&req.spec)?,
            other => {
                return Err(Error::InvalidSpec(format!(
                    "unknown spec format `{other}` (expected toml or json)"
                ))
                .into())
            }
        };
        let row = self.coord.submit(spec)?;
        Ok(Response::new(self.coord.job_info(&row.id)?))
    }

    async fn get(&self, request: Request<v1::GetRequest>) -> Result<Response<v1::JobInfo>, Status> {
        Ok(Response::new(
            self.coord.job_info(&request.into_inner().job_id)?,
        ))
    }

    async fn list(
        &self,
        _request: Request<v1::ListRequest>,
    ) -> Result<Response<v1::ListResponse>, Status> {
        Ok(Response::new(v1::ListResponse {
            jobs: self.coord.list()?,
        }))
    }

    async fn cancel(
        &self,
        request: Request<v1::CancelRequest>,
    ) -> Result<Response<v1::JobInfo>, Status> {
        Ok(Response::new(self.coord.cancel(&request.into_inner().job_id)?))
    }

    type WatchStream = BoxStream<v1::WatchEvent>;

    async fn watch(
        &self,
        request: Request<v1::WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let id = request.into_inner().job_id;
        let (history, live) = self.coord.watch(&id)?;
        let last_round = history
            .iter()
            .filter_map(|e| match &e.event {
                Some(v1::watch_event::Event::Round(r)) => Some(r.round),
                _ => None,
            })
            .max()
            .unwrap_or(0);
        let head = futures::stream::iter(history.into_iter().map(Ok));
        let Some(rx) = live else {
            return Ok(Response::new(Box::pin(head)));
        };
        let coord = self.coord.clone();
        // Live events after the history; a lagging watcher is told how many reports it missed.
        let tail = tokio_stream::wrappers::BroadcastStream::new(rx)
            .filter_map(move |item| {
                let coord = coord.clone();
                let id = id.clone();
                async move {
                    match item {
                        Ok(ev) => match &ev.event {
                            Some(v1::watch_event::Event::Round(r)) if r.round <= last_round => None,
                            _ => Some(Ok(ev)),
                        },
                        Err(tokio_stream::wrappers::errors::BroadcastStreamRecvError::Lagged(n)) => {
                            warn!(job = %id, missed = n, "watcher lagged");
                            coord.job_info(&id).ok().map(|_| {
                                Err(Status::data_loss(format!("watcher fell behind by {n} reports; run `job status`")))
                            })
                        }
                    }
                }
            });
        // End the stream after the job's final event.
        let mut done = false;
        let tail = tail.take_while(move |item| {
            let keep = !done;
            if matches!(item, Ok(v1::WatchEvent { event: Some(v1::watch_event::Event::Finished(_)) })) {
                done = true;
            }
            futures::future::ready(keep)
        });
        let shutdown = self.coord.shutdown_token().clone().cancelled_owned();
        Ok(Response::new(Box::pin(head.chain(tail).take_until(shutdown))))
    }
}
