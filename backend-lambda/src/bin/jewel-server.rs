//! `jewel-server`: the self-hosted JewelFS service and its admin commands.
//! Parses arguments and calls the library; nothing else lives here.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use backend_lambda::service::Service;
use backend_lambda::store::sqlite::SqliteOptions;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(version, about = "The JewelFS service: serve the API, manage users")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Args, Clone)]
struct DataArg {
    /// Where the embedded store keeps its database and blocks.
    #[arg(long, env = "JEWEL_DATA", global = true)]
    data: Option<PathBuf>,
    /// Where the state lives: `embedded` (SQLite and a block folder under --data) or `aws`
    /// (DynamoDB, S3, SQS named by JEWEL_TABLE, JEWEL_BUCKET and the standard AWS environment).
    #[arg(
        long,
        value_enum,
        default_value = "embedded",
        env = "JEWEL_BACKEND",
        global = true
    )]
    backend: Backend,
}

#[derive(clap::ValueEnum, Clone, Copy, PartialEq, Eq)]
enum Backend {
    Embedded,
    Aws,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the API, the block URLs and the web portal.
    Serve {
        #[command(flatten)]
        data: DataArg,
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:7070", env = "JEWEL_LISTEN")]
        listen: SocketAddr,
        /// Log every request (method, path, status, time); RUST_LOG overrides.
        #[arg(long)]
        verbose: bool,
        /// Most devices (machines) one user may have at once: each costs a queue and a send
        /// per change in AWS mode. 100 is far beyond a household's machines; a benchmark of
        /// one account on a thousand clients raises it.
        #[arg(long, default_value_t = 100, env = "JEWEL_MAX_DEVICES", value_parser = clap::value_parser!(u32).range(1..=100_000))]
        max_devices: u32,
    },
    /// Create the DynamoDB table, S3 bucket and whatever else AWS mode needs and is missing.
    AwsInit {
        /// Accepted (and ignored) so that every admin command takes the same options.
        #[command(flatten)]
        data: DataArg,
    },
    /// Run the AWS-mode maintenance once now, as the scheduled function does every day:
    /// empty old trash, forget old versions, collect blocks nothing references. Prints what
    /// it did as JSON. (The embedded server does this on its own while it serves.)
    Maintenance {
        #[command(flatten)]
        data: DataArg,
    },
    /// Manage users.
    User {
        #[command(subcommand)]
        command: UserCommand,
        #[command(flatten)]
        data: DataArg,
    },
}

#[derive(Subcommand)]
enum UserCommand {
    /// Create a user; prints its account token as the last line (sign in to the portal with
    /// it and approve each machine's `jewelfs login` code there).
    Add { name: String },
    /// List users.
    List,
    /// Remove a user and everything it owns.
    Remove { name: String },
    /// Issue a new account token for a user (the old one stops working); prints it as the last
    /// line. Machines linked with their own tokens keep working: unlink those one by one.
    Token { name: String },
    /// Forget every device of a user, freeing its device slots and revoking the devices' own
    /// tokens: machines using the account token register again when they next mount, linked
    /// machines must be linked again (`jewelfs login`).
    ForgetDevices { name: String },
}

fn data_dir(arg: &DataArg) -> anyhow::Result<PathBuf> {
    if let Some(dir) = &arg.data {
        return Ok(dir.clone());
    }
    let home = std::env::var_os("HOME").context("HOME is not set; pass --data DIR")?;
    Ok(PathBuf::from(home).join(".local/share/jewel"))
}

async fn open(arg: &DataArg, options: &SqliteOptions) -> anyhow::Result<Service> {
    if arg.backend == Backend::Aws {
        return aws_service().await;
    }
    let dir = data_dir(arg)?;
    Service::embedded_with(&dir, options)
        .with_context(|| format!("could not open the data folder {}", dir.display()))
}

#[cfg(feature = "aws")]
async fn aws_service() -> anyhow::Result<Service> {
    backend_lambda::aws::spawn_request_counts_writer();
    backend_lambda::aws::service_from_env().await
}

#[cfg(not(feature = "aws"))]
async fn aws_service() -> anyhow::Result<Service> {
    anyhow::bail!("this jewel-server was built without the `aws` feature")
}

#[cfg(feature = "aws")]
async fn aws_init() -> anyhow::Result<()> {
    backend_lambda::aws::init_from_env().await?;
    println!("the AWS resources are ready");
    Ok(())
}

#[cfg(not(feature = "aws"))]
async fn aws_init() -> anyhow::Result<()> {
    anyhow::bail!("this jewel-server was built without the `aws` feature")
}

async fn maintenance(data: &DataArg) -> anyhow::Result<()> {
    if data.backend != Backend::Aws {
        // The embedded collector keeps commits out with a lock of the serving process; a
        // second process cannot take it, so it must not collect blocks beside a server.
        anyhow::bail!(
            "the embedded server does its maintenance itself, every hour while it serves; \
             this command is for AWS mode (--backend aws)"
        );
    }
    aws_maintenance().await
}

#[cfg(feature = "aws")]
async fn aws_maintenance() -> anyhow::Result<()> {
    use backend_lambda::aws::scheduled;
    let report = scheduled::run_from_env(scheduled::MaintenanceSettings::default()).await?;
    println!("{}", scheduled::report_json(&report));
    if !report.finished {
        eprintln!("the run's time was up before every user was done; run it again to go on");
    }
    Ok(())
}

#[cfg(not(feature = "aws"))]
async fn aws_maintenance() -> anyhow::Result<()> {
    anyhow::bail!("this jewel-server was built without the `aws` feature")
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // The request log (`jewel::request`, a line per request, long-polls included) only when
    // asked for: a person running the server reads start, stop and problems.
    let verbose = matches!(cli.command, Command::Serve { verbose: true, .. });
    let default_filter = if verbose {
        "info"
    } else {
        "info,jewel::request=warn"
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| default_filter.into()),
        )
        .with_writer(std::io::stderr)
        // Colour codes only for a terminal, not into a log file or the journal.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    match cli.command {
        Command::Serve {
            data,
            listen,
            max_devices,
            ..
        } => {
            #[cfg(feature = "aws")]
            if data.backend == Backend::Aws {
                backend_lambda::aws::check_serving_env()?;
            }
            let mut service = open(&data, &SqliteOptions::default()).await?;
            service.limits.max_devices = max_devices as usize;
            let service = Arc::new(service);
            backend_lambda::server::serve(service, listen).await
        }
        Command::AwsInit { .. } => aws_init().await,
        Command::Maintenance { data } => maintenance(&data).await,
        Command::User { command, data } => {
            // Beside a running server: wait for the database rather than fail.
            backend_lambda::admin::retry_while_busy(backend_lambda::admin::BUSY_WAIT, || {
                user_command(&command, &data)
            })
            .await
        }
    }
}

async fn user_command(command: &UserCommand, data: &DataArg) -> anyhow::Result<()> {
    let service = open(data, &SqliteOptions::admin()).await?;
    let meta = service.meta.as_ref();
    match command {
        UserCommand::Add { name } => {
            let (user, token) = backend_lambda::admin::add_user(meta, name).await?;
            println!("created user {} (id {})", user.name, user.id);
            println!(
                "its account token follows: sign in to the portal with it to link machines (`jewelfs login` on each)"
            );
            println!("{token}");
        }
        UserCommand::List => {
            for user in backend_lambda::admin::list_users(meta).await? {
                println!("{}\t{}", user.name, user.id);
            }
        }
        UserCommand::Remove { name } => {
            let removed = backend_lambda::admin::remove_user_everywhere(&service, name).await?;
            println!(
                "removed user {name} ({} blocks, {} device queues)",
                removed.blocks, removed.queues
            );
        }
        UserCommand::ForgetDevices { name } => {
            let n = backend_lambda::admin::forget_devices(&service, name).await?;
            println!(
                "forgot {n} device(s) of {name} and revoked their own tokens; machines on the account token register again at their next mount, linked ones need `jewelfs login`"
            );
        }
        UserCommand::Token { name } => {
            let token = backend_lambda::admin::reissue_token(meta, name).await?;
            println!("issued a new token for {name}; the old one no longer works");
            println!("{token}");
        }
    }
    Ok(())
}
