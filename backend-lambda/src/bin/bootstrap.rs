//! `bootstrap`: the AWS Lambda entry point. Builds the service from the environment and hands
//! the router to `lambda_http`, which translates API Gateway (HTTP API v2 / REST) events.
//! `JEWEL_BACKEND=embedded` with `JEWEL_DATA` runs on the embedded store (for local trials);
//! the AWS stores are the default once the `aws` feature provides them. With
//! `JEWEL_TASK=maintenance` the same binary is the scheduled maintenance function instead
//! (`backend_lambda::aws::scheduled`), started by EventBridge rather than API Gateway.

use std::sync::Arc;

use backend_lambda::service::Service;

#[tokio::main]
async fn main() -> Result<(), lambda_http::Error> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .without_time()
        .init();
    #[cfg(feature = "aws")]
    {
        use backend_lambda::aws::scheduled;
        if std::env::var(scheduled::ENV_TASK).as_deref() == Ok(scheduled::TASK_MAINTENANCE) {
            // The maintenance function (EventBridge's schedule): the same package, another task.
            return scheduled::lambda_main().await;
        }
    }
    let service = match std::env::var("JEWEL_BACKEND").as_deref() {
        Ok("embedded") => {
            let data = std::env::var("JEWEL_DATA").unwrap_or_else(|_| "/tmp/jewel".into());
            Service::embedded(std::path::Path::new(&data))?
        }
        #[cfg(feature = "aws")]
        Ok("aws") | Err(_) => {
            backend_lambda::aws::check_serving_env()?;
            backend_lambda::aws::service_from_env().await?
        }
        other => {
            return Err(format!("JEWEL_BACKEND={other:?}: expected `aws` or `embedded`").into())
        }
    };
    let router = backend_lambda::api::router(Arc::new(service));
    lambda_http::run(router).await
}
