//! `clicknback-api`: serves the HTTP API, applies migrations, creates admins.

use clap::{Parser, Subcommand};
use clicknback_core::{config::Config, db, models::user::Role, services::users, telemetry};

#[derive(Parser)]
#[command(name = "clicknback-api", version, about = "ClickNBack HTTP API")]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the API (the default).
    Serve,
    /// Apply pending database migrations and exit.
    Migrate,
    /// Create an admin account.
    CreateAdmin {
        #[arg(long)]
        email: String,
        /// The password (at least 8 characters). Prefer CLICKNBACK_ADMIN_PASSWORD in shared shells.
        #[arg(long, env = "CLICKNBACK_ADMIN_PASSWORD", hide_env_values = true)]
        password: String,
    },
}

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    let config = match Config::from_env() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    };
    telemetry::init(!config.is_development());
    if let Err(e) = run(cli.command.unwrap_or(Command::Serve), config).await {
        tracing::error!(error = %format!("{e:#}"), "clicknback-api failed");
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

async fn run(command: Command, config: Config) -> anyhow::Result<()> {
    match command {
        Command::Serve => clicknback_api::serve(config).await,
        Command::Migrate => {
            let applied = db::run_migrations_with_progress(&config.database_url, |step| {
                println!(
                    "[{}/{}] applied {} ({} ms)",
                    step.index,
                    step.total,
                    step.name,
                    step.elapsed.as_millis()
                );
            })
            .await?;
            match applied.len() {
                0 => println!("the database is up to date; no migration to apply"),
                n => println!("{n} migration(s) applied"),
            }
            Ok(())
        }
        Command::CreateAdmin { email, password } => {
            db::run_migrations(&config.database_url).await?;
            let mut conn = db::connect(&config.database_url).await?;
            let user = users::create(&mut conn, &email, &password, Role::Admin)
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            println!("admin created: {} ({})", user.email, user.id);
            Ok(())
        }
    }
}
