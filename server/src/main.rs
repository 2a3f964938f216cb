//! `gridpatrol`: the command line. Parsing only; the work lives in the library.

use std::io::Read;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use diesel::prelude::*;
use gridpatrol_server::auth::{Role, credentials, tokens};
use gridpatrol_server::config::{Config, ServeConfig};
use gridpatrol_server::db::Db;
use gridpatrol_server::grids::import::{self, ImportError, Importer};
use gridpatrol_server::people::{self, Employment, NewUser};
use gridpatrol_server::schema::{grids, users};
use gridpatrol_server::{build_state, demo, launch};

#[derive(Parser)]
#[command(
    name = "gridpatrol",
    version,
    about = "GridPatrol: eco-environment grid supervision server"
)]
struct Cli {
    #[command(flatten)]
    config: Config,
    /// Log format: `text` or `json`.
    #[arg(
        long,
        env = "GRIDPATROL_LOG_FORMAT",
        default_value = "text",
        global = true
    )]
    log_format: String,
    #[command(subcommand)]
    command: Command,
}

// `Serve` carries the whole server configuration; the command line is parsed once, so its size
// does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Command {
    /// Run the HTTP server (migrates SQLite on start).
    Serve {
        #[command(flatten)]
        serve: Box<ServeConfig>,
        /// On an empty database, load the 榕江县 demo jurisdiction and print its sign-in details.
        #[arg(long)]
        demo: bool,
        /// Also run pending PostgreSQL migrations (SQLite always migrates).
        #[arg(long)]
        migrate: bool,
    },
    /// Run pending database migrations.
    Migrate,
    /// Import or update grids from a GeoJSON FeatureCollection (all or nothing).
    ImportGrids { file: PathBuf },
    /// Manage people.
    User {
        #[command(subcommand)]
        command: UserCommand,
    },
    /// Print a one-time enrollment code (valid 24 h) for an inspector's phone.
    Enroll {
        /// The user name of the phone's owner.
        #[arg(long)]
        user: String,
    },
    /// Add a new token signing key (used by server processes from their next start). Tokens signed
    /// with older keys stay valid until they expire, unless --retire-previous.
    RotateSigningKey {
        /// Stop accepting tokens signed with every older key (e.g. after a leak); clients refresh.
        #[arg(long)]
        retire_previous: bool,
    },
    /// Recompute the patrol and problem rows from the change store.
    RebuildProjections,
    /// Judge every patrol again from the stored documents and the rules (the same verdicts as
    /// kept up to date while syncing).
    RecomputeCompliance,
    /// Write the OpenAPI document (YAML) to a file or standard output.
    Openapi {
        #[arg(long)]
        output: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum UserCommand {
    /// Add a person, optionally with a role in a grid and a password.
    Add {
        #[arg(long)]
        username: String,
        /// Display name, e.g. 张伟.
        #[arg(long)]
        name: String,
        #[arg(long)]
        phone: Option<String>,
        /// Read a password from standard input (for people who sign in on the web).
        #[arg(long)]
        password_stdin: bool,
        /// Code of the grid where the role is held.
        #[arg(long, requires = "role")]
        grid: Option<String>,
        /// leader, deputy, inspector, liaison, supervisor or admin.
        #[arg(long, requires = "grid")]
        role: Option<String>,
        /// For inspectors: full_time or part_time.
        #[arg(long)]
        employment: Option<String>,
        /// Operator account: sees and manages everything, may import new top-level grids.
        #[arg(long)]
        superuser: bool,
    },
}

/// mimalloc instead of glibc's allocator: merging Automerge documents allocates many small,
/// short-lived objects from several threads, where glibc's arenas spent a quarter of the ingest time
/// (perf, `cargo bench -p gridpatrol-tests --bench ingest`).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    if !cfg!(feature = "fault-injection") && std::env::var_os("GRIDPATROL_FAULT").is_some() {
        // A fault suite run against a build without crash points would test nothing.
        eprintln!(
            "error: GRIDPATROL_FAULT is set, but this build has no crash points (feature fault-injection)"
        );
        return ExitCode::from(2);
    }
    init_tracing(&cli.log_format);
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_tracing(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,actix_server=warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}

fn open(config: &Config) -> anyhow::Result<Db> {
    Ok(Db::open(&config.database_url(), config.db_pool_size)?)
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let config = cli.config;
    match cli.command {
        Command::Serve {
            serve,
            demo: with_demo,
            migrate,
        } => serve_command(config, *serve, with_demo, migrate),
        Command::Migrate => {
            let db = open(&config)?;
            let applied = db.migrate()?;
            println!("{} migration(s) applied", applied.len());
            Ok(())
        }
        Command::ImportGrids { file } => {
            let bytes =
                std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
            let db = open(&config)?;
            db.migrate()?;
            // The operator's own file: the default caps still apply (a bigger file is a mistake).
            let limits = import::Limits::default();
            let result = db
                .write_blocking(|conn| import::import(conn, &bytes, &Importer::Operator, &limits));
            match result {
                Ok(report) => {
                    println!(
                        "imported {}: {} created, {} updated, {} unchanged; {} grids in all",
                        file.display(),
                        report.created,
                        report.updated,
                        report.unchanged,
                        report.total
                    );
                    Ok(())
                }
                Err(ImportError::Invalid(problems)) => {
                    for p in &problems {
                        eprintln!(
                            "feature #{} ({}): {}: {}",
                            p.index,
                            p.code.as_deref().unwrap_or("no code"),
                            p.reason,
                            p.message
                        );
                    }
                    bail!("{} problem(s); nothing was imported", problems.len())
                }
                Err(e) => Err(e.into()),
            }
        }
        Command::User {
            command:
                UserCommand::Add {
                    username,
                    name,
                    phone,
                    password_stdin,
                    grid,
                    role,
                    employment,
                    superuser,
                },
        } => {
            let password = if password_stdin {
                let mut text = String::new();
                std::io::stdin().read_to_string(&mut text)?;
                Some(text.trim_end_matches(['\r', '\n']).to_string())
            } else {
                None
            };
            let role = role
                .map(|r| Role::parse(&r).with_context(|| format!("unknown role {r:?}")))
                .transpose()?;
            let employment = match employment.as_deref() {
                None => None,
                Some("full_time") => Some(Employment::FullTime),
                Some("part_time") => Some(Employment::PartTime),
                Some(other) => bail!("unknown employment {other:?}: use full_time or part_time"),
            };
            let db = open(&config)?;
            db.migrate()?;
            let id = db
                .write_blocking(|conn| {
                    let id = people::create_user(
                        conn,
                        &NewUser {
                            username: &username,
                            display_name: &name,
                            phone: phone.as_deref(),
                            password: password.as_deref(),
                            is_superuser: superuser,
                        },
                    )?;
                    if let (Some(code), Some(role)) = (&grid, role) {
                        let grid_id: Option<i64> = grids::table
                            .filter(grids::code.eq(code))
                            .select(grids::id)
                            .first(conn)
                            .optional()?;
                        let grid_id = grid_id.ok_or_else(|| {
                            gridpatrol_server::error::ApiError::not_found(
                                "grid_not_found",
                                format!("no grid with code {code}"),
                            )
                        })?;
                        people::grant_role(conn, id, grid_id, role, employment, None)?;
                    }
                    Ok::<_, gridpatrol_server::error::ApiError>(id)
                })
                .map_err(|e| anyhow::anyhow!("{}", e.message))?;
            println!("user {username} created with id {id}");
            Ok(())
        }
        Command::Enroll { user } => {
            let db = open(&config)?;
            db.migrate()?;
            let (code, expires) = db
                .write_blocking(|conn| {
                    let id: Option<i64> = users::table
                        .filter(users::username.eq(&user))
                        .select(users::id)
                        .first(conn)
                        .optional()?;
                    let id = id.ok_or_else(|| {
                        gridpatrol_server::error::ApiError::not_found(
                            "user_not_found",
                            format!("no user {user}"),
                        )
                    })?;
                    Ok::<_, gridpatrol_server::error::ApiError>(credentials::new_enrollment_code(
                        conn, id, None,
                    )?)
                })
                .map_err(|e| anyhow::anyhow!("{}", e.message))?;
            println!("enrollment code for {user}: {code}");
            println!("valid until {expires} UTC, for one phone");
            Ok(())
        }
        Command::RotateSigningKey { retire_previous } => {
            let db = open(&config)?;
            db.migrate()?;
            let (kid, retired) = db.write_blocking(|conn| {
                let kid = tokens::new_signing_key(conn)?;
                let retired = if retire_previous {
                    tokens::retire_signing_keys_except(conn, &kid)?
                } else {
                    0
                };
                Ok::<_, gridpatrol_server::error::ApiError>((kid, retired))
            })?;
            println!(
                "new signing key {kid}; running servers sign with it within 10 seconds, no restart needed"
            );
            if retire_previous {
                println!(
                    "{retired} older key(s) retired: their tokens stop working within 10 seconds; clients refresh"
                );
            }
            Ok(())
        }
        Command::RebuildProjections => {
            let db = open(&config)?;
            db.migrate()?;
            let count = db
                .write_blocking(gridpatrol_server::sync::rebuild_projections)
                .map_err(|e| anyhow::anyhow!("{}", e.message))?;
            println!("{count} document(s) projected again");
            Ok(())
        }
        Command::RecomputeCompliance => {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            runtime.block_on(async move {
                let state = build_state(&config, &ServeConfig::default(), true).await?;
                let count = gridpatrol_server::compliance::judging::recompute_all(&state)
                    .await
                    .map_err(|e| anyhow::anyhow!("{}", e.message))?;
                println!("{count} patrol(s) judged again");
                Ok(())
            })
        }
        Command::Openapi { output } => {
            let yaml = gridpatrol_server::openapi_yaml();
            match output {
                Some(path) => std::fs::write(&path, yaml)
                    .with_context(|| format!("writing {}", path.display()))?,
                None => print!("{yaml}"),
            }
            Ok(())
        }
    }
}

fn serve_command(
    config: Config,
    serve: ServeConfig,
    with_demo: bool,
    migrate: bool,
) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        tracing::info!(?config, ?serve, "starting");
        let state = build_state(&config, &serve, migrate).await?;
        if with_demo {
            let loaded = state
                .db
                .write(demo::load_if_empty)
                .await
                .map_err(|e| anyhow::anyhow!("loading the demo: {}", e.message))?;
            state
                .refresh_index()
                .await
                .map_err(|e| anyhow::anyhow!("rebuilding the grid index: {}", e.message))?;
            print_demo(&serve, loaded);
        }
        let listener =
            TcpListener::bind(serve.listen).with_context(|| format!("binding {}", serve.listen))?;
        tracing::info!(address = %serve.listen, "listening");
        launch(state, listener, &serve)?.await?;
        Ok(())
    })
}

fn print_demo(serve: &ServeConfig, loaded: Option<demo::DemoSummary>) {
    let base = format!("http://{}", serve.listen);
    println!();
    match &loaded {
        Some(summary) => println!(
            "GridPatrol demo: 榕江县 loaded ({} grids, {} inspectors, {} township leaders and deputies).",
            summary.grids, summary.inspectors, summary.township_supervisors
        ),
        None => println!("GridPatrol demo: the database already has grids; nothing was loaded."),
    }
    println!("  Console         {base}/   (监管台: sign in with a name and password below)");
    println!("  API             {base}/healthz   and   {base}/openapi.json");
    println!("  Locate a point  curl '{base}/v1/grids/locate?lon=108.52&lat=25.93'");
    println!("  County admin    {}  /  {}", demo::ADMIN, demo::PASSWORD);
    println!(
        "  Township leader leader-{}  /  {}   (古州镇; leader-522632001 for 车民街道, where patrol-sim walks)",
        demo::DEMO_TOWNSHIP,
        demo::PASSWORD
    );
    println!(
        "  Sign in         curl -X POST {base}/v1/auth/login -H 'content-type: application/json' -d '{{\"username\":\"{}\",\"password\":\"{}\"}}'",
        demo::ADMIN,
        demo::PASSWORD
    );
    if let Some(summary) = loaded.as_ref().filter(|s| !s.sample_inspector.0.is_empty()) {
        println!(
            "  Enroll a phone  inspector {} with code {} (valid 24 h)",
            summary.sample_inspector.0, summary.sample_inspector.1
        );
    }
    println!();
}
