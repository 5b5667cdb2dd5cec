//! `health`: whether a coordinator serves (gRPC health), for healthchecks and scripts.

use super::*;

#[derive(Debug, Args)]
pub struct HealthArgs {
    /// The coordinator's address.
    #[arg(
        long,
        env = "SHOAL_COORDINATOR",
        default_value = "http://127.0.0.1:50051"
    )]
    pub coordinator: String,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 3)]
    pub timeout_secs: u64,
    #[command(flatten)]
    pub tls: shoal_client::TlsFiles,
}

pub(super) async fn health_cmd(a: &HealthArgs) -> anyhow::Result<i32> {
    use tonic_health::pb::{health_check_response::ServingStatus, health_client::HealthClient};
    let limit = std::time::Duration::from_secs(a.timeout_secs.max(1));
    let check = async {
        let tls = a.tls.load()?;
        let channel = shoal_client::endpoint_with(&a.coordinator, tls.as_ref())?
            .connect_timeout(limit)
            .connect()
            .await?;
        let reply = HealthClient::new(channel)
            .check(tonic_health::pb::HealthCheckRequest {
                service: String::new(),
            })
            .await?;
        anyhow::Ok(reply.into_inner().status)
    };
    match tokio::time::timeout(limit, check).await {
        Ok(Ok(status)) if status == ServingStatus::Serving as i32 => {
            println!("serving");
            Ok(0)
        }
        Ok(Ok(status)) => {
            println!("not serving (status {status})");
            Ok(1)
        }
        Ok(Err(e)) => {
            println!("unreachable: {}", e.to_string().replace('\n', " "));
            Ok(1)
        }
        Err(_) => {
            println!("no answer within {}s", limit.as_secs());
            Ok(1)
        }
    }
}
