//! `interop`: the strongSwan interop harness for anyhubd.
//!
//! Each case builds two network namespaces joined by a veth, runs
//! strongSwan 5.9 (charon + swanctl, kernel-libipsec) on the site side and
//! anyhubd on the hub side, drives a handshake and checks both
//! `swanctl --list-sas` and `anyhubctl status --json`. See README.md.
//!
//! ```text
//! interop run [--filter SUBSTR] [--keep-logs DIR]   every case vs anyhubd
//! interop list                                      case names
//! interop selfcheck [--filter SUBSTR] [--keep-logs DIR]
//!                                                   the cases with a strongSwan stand-in hub
//! interop demo                                      one tunnel, and what both sides say
//! interop bench-dataplane [--seconds N]             throughput: anyhub, strongSwan, boringtun, veth
//! interop bench-ike [--quick] [--windows 1,2,4] [--peers N] [--charon-threads N]
//!                   [--step-seconds S] [--run-seconds S] [--rounds N] [--rate-fraction F]
//!                                                   handshakes/s, latency and CPU vs
//!                                                   anyhubd and strongSwan (docs/benchmarks.md)
//! ```
//!
//! The anyhubd/anyhubctl contract (config TOML, CLI, status JSON) is in
//! docs/daemon-contract.md.

mod anycast;
mod anyhub;
mod bench_dataplane;
mod bench_ike;
mod cases;
mod flood;
mod lab;
mod pairs;
mod pki;
mod strongswan;
mod sync_cases;
mod sys;
mod traffic;

use std::any::Any;
use std::panic::{self, AssertUnwindSafe};
use std::path::PathBuf;
use std::process::{Command, ExitCode};
use std::sync::Mutex;

use anyhow::{bail, Result};

use crate::anyhub::Binaries;
use crate::cases::{Case, HubKind, Outcome};

const USAGE: &str = "usage: interop run [--filter SUBSTR] [--keep-logs DIR]
       interop list
       interop selfcheck [--filter SUBSTR] [--keep-logs DIR]
       interop demo
       interop bench-dataplane [--seconds N]   (hold the machine lock: make bench-dataplane)
       interop bench-ike [--quick] [--windows 1,2,4,...] [--peers N] [--charon-threads N]
                         [--step-seconds S] [--run-seconds S] [--rounds N] [--rate-fraction F]

env: ANYHUBD, ANYHUBCTL   anyhubd/anyhubctl (default: next to this binary)
     CHARON               charon binary (default: /usr/lib/ipsec/charon or charon-systemd)
     ANYHUBD_LOG_LEVEL    anyhubd --log-level (default debug)
     ANYHUB_INTEROP_OPTIONAL=1   `run` without root prints SKIPPED and exits 0";

/// Exit code for "the harness could not run" (as opposed to "a case failed").
const EXIT_SETUP: u8 = 2;

#[derive(Debug, PartialEq)]
enum Cmd {
    Run,
    List,
    Selfcheck,
    Demo,
    BenchDataplane,
    BenchIke(bench_ike::Options),
}

#[derive(Debug)]
struct Args {
    cmd: Cmd,
    filter: Option<String>,
    keep_logs: Option<PathBuf>,
    seconds: u64,
}

fn parse_args(mut args: impl Iterator<Item = String>) -> Result<Args> {
    let cmd = match args.next().as_deref() {
        Some("run") => Cmd::Run,
        Some("list") => Cmd::List,
        Some("selfcheck") => Cmd::Selfcheck,
        Some("demo") => Cmd::Demo,
        Some("bench-dataplane") => Cmd::BenchDataplane,
        Some("bench-ike") => {
            return Ok(Args {
                cmd: Cmd::BenchIke(bench_ike::Options::parse(args)?),
                filter: None,
                keep_logs: None,
                seconds: 5,
            })
        }
        Some(other) => bail!("unknown subcommand {other:?}"),
        None => bail!("missing subcommand"),
    };
    let mut parsed = Args {
        cmd,
        filter: None,
        keep_logs: None,
        seconds: 5,
    };
    while let Some(a) = args.next() {
        let takes_options = matches!(parsed.cmd, Cmd::Run | Cmd::Selfcheck);
        match a.as_str() {
            "--filter" if takes_options => {
                parsed.filter = Some(
                    args.next()
                        .ok_or_else(|| anyhow::anyhow!("--filter needs a value"))?,
                )
            }
            "--keep-logs" if takes_options => {
                parsed.keep_logs = Some(
                    args.next()
                        .ok_or_else(|| anyhow::anyhow!("--keep-logs needs a directory"))?
                        .into(),
                )
            }
            "--seconds" if matches!(parsed.cmd, Cmd::BenchDataplane) => {
                parsed.seconds = args
                    .next()
                    .and_then(|v| v.parse().ok())
                    .filter(|&s| (1..=600).contains(&s))
                    .ok_or_else(|| anyhow::anyhow!("--seconds needs 1..600"))?
            }
            _ => bail!("unexpected argument {a:?}"),
        }
    }
    Ok(parsed)
}

static LAST_PANIC: Mutex<Option<String>> = Mutex::new(None);

/// A caught panic's message with its location (recorded by our hook).
pub fn panic_message(payload: &Box<dyn Any + Send>) -> String {
    if let Some(m) = LAST_PANIC.lock().unwrap_or_else(|e| e.into_inner()).take() {
        return m;
    }
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(non-string panic)".into())
}

/// Runs a case's body: `None` if it passed, else its error on one line (or
/// the panic's message: a panicking case still fails cleanly and its lab
/// is still torn down by its owner).
pub fn failure_of(body: impl FnOnce() -> anyhow::Result<()>) -> Option<String> {
    match panic::catch_unwind(AssertUnwindSafe(body)) {
        Ok(Ok(())) => None,
        Ok(Err(e)) => Some(
            format!("{e:#}")
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" "),
        ),
        Err(p) => Some(format!("panicked: {}", panic_message(&p))),
    }
}

/// The last lines of each named log, for a failed case's report.
pub fn log_tails(
    failure: &Option<String>,
    logs: &[(String, std::path::PathBuf)],
) -> Vec<(String, String)> {
    if failure.is_none() {
        return Vec::new();
    }
    logs.iter()
        .map(|(name, path)| (name.clone(), lab::tail(path, 20)))
        .collect()
}

fn install_panic_hook() {
    panic::set_hook(Box::new(|info| {
        let msg = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "(non-string panic)".into());
        let at = info
            .location()
            .map(|l| format!(" at {}:{}", l.file(), l.line()))
            .unwrap_or_default();
        *LAST_PANIC.lock().unwrap_or_else(|e| e.into_inner()) = Some(format!("{msg}{at}"));
    }));
}

/// swanctl, ip and a charon must exist before anything else makes sense.
fn check_tools() -> Result<()> {
    strongswan::charon_binary()?;
    for (tool, args, package) in [
        ("swanctl", ["--help"], "strongswan-swanctl"),
        ("ip", ["-V"], "iproute2"),
        ("unshare", ["--version"], "util-linux"),
    ] {
        let ok = Command::new(tool)
            .args(args)
            .output()
            .is_ok_and(|o| o.status.success());
        if !ok {
            bail!("`{tool}` not found or not working (apt-get install {package})");
        }
    }
    Ok(())
}

fn print_outcome(name: &str, outcome: &Outcome) {
    match &outcome.failure {
        None => println!("PASS {name}"),
        Some(why) => {
            println!("FAIL {name}: {why}");
            for (label, tail) in &outcome.logs {
                println!("    --- {label} (tail) ---");
                for line in tail.lines() {
                    println!("    {line}");
                }
            }
        }
    }
}

/// Runs `run_case` behind a second catch_unwind (belt and braces: a panic
/// in lab construction or teardown still yields a FAIL line).
fn run_one(case: &Case, kind: HubKind, keep: Option<&std::path::Path>, show: bool) -> Outcome {
    panic::catch_unwind(AssertUnwindSafe(|| cases::run_case(case, kind, keep, show)))
        .unwrap_or_else(|payload| Outcome {
            failure: Some(format!("panicked: {}", panic_message(&payload))),
            logs: Vec::new(),
        })
}

fn run_suite(args: &Args, kind: HubKind) -> ExitCode {
    let matches = |name: &str| {
        args.filter
            .as_ref()
            .is_none_or(|f| name.contains(f.as_str()))
    };
    let selected: Vec<Case> = cases::all()
        .into_iter()
        .filter(|c| matches(&c.name))
        .collect();
    let pair_cases: Vec<pairs::PairCase> = pairs::all()
        .into_iter()
        .filter(|c| matches(&c.name))
        .collect();
    let sync_cases: Vec<sync_cases::SyncCase> = sync_cases::all()
        .into_iter()
        .filter(|c| matches(&c.name))
        .collect();
    if selected.is_empty() && pair_cases.is_empty() && sync_cases.is_empty() {
        eprintln!(
            "interop: no case matches --filter {:?}",
            args.filter.as_deref().unwrap_or("")
        );
        return ExitCode::from(EXIT_SETUP);
    }
    let selfcheck = matches!(kind, HubKind::StrongSwan);
    let (mut passed, mut failed, mut skipped) = (0, 0, 0);
    for case in &selected {
        if let (true, Some(why)) = (selfcheck, case.anyhub_only) {
            println!("SKIP {}: anyhubd only ({why})", case.name);
            skipped += 1;
            continue;
        }
        let outcome = run_one(case, kind, args.keep_logs.as_deref(), false);
        print_outcome(&case.name, &outcome);
        if outcome.failure.is_some() {
            failed += 1;
        } else {
            passed += 1;
        }
    }
    for case in &pair_cases {
        let HubKind::Anyhub(bins) = kind else {
            println!("SKIP {}: anyhubd only (anyhubd on both ends)", case.name);
            skipped += 1;
            continue;
        };
        let outcome = pairs::run(case, bins, args.keep_logs.as_deref());
        print_outcome(&case.name, &outcome);
        if outcome.failure.is_some() {
            failed += 1;
        } else {
            passed += 1;
        }
    }
    for case in &sync_cases {
        let HubKind::Anyhub(bins) = kind else {
            println!(
                "SKIP {}: anyhubd only (anyhubd nodes replicating)",
                case.name
            );
            skipped += 1;
            continue;
        };
        let outcome = sync_cases::run(case, bins, args.keep_logs.as_deref());
        print_outcome(&case.name, &outcome);
        if outcome.failure.is_some() {
            failed += 1;
        } else {
            passed += 1;
        }
    }
    if selfcheck {
        println!("{passed} passed, {failed} failed, {skipped} skipped");
    } else {
        println!("{passed} passed, {failed} failed");
    }
    if failed > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

fn main() -> ExitCode {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    if matches!(
        argv.first().map(String::as_str),
        Some("help" | "-h" | "--help")
    ) {
        println!("{USAGE}");
        return ExitCode::SUCCESS;
    }
    let args = match parse_args(argv.into_iter()) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("interop: {e}\n{USAGE}");
            return ExitCode::from(EXIT_SETUP);
        }
    };
    if args.cmd == Cmd::List {
        for c in cases::all() {
            println!("{}", c.name);
        }
        for c in pairs::all() {
            println!("{}", c.name);
        }
        for c in sync_cases::all() {
            println!("{}", c.name);
        }
        return ExitCode::SUCCESS;
    }
    if !sys::is_root() {
        // stdout: the line belongs in the suite's report, not only in stderr.
        println!("#################################################################");
        println!("interop SKIPPED: needs root for network namespaces");
        println!("#################################################################");
        let optional = std::env::var("ANYHUB_INTEROP_OPTIONAL").is_ok_and(|v| v == "1");
        return if args.cmd == Cmd::Run && optional {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(EXIT_SETUP)
        };
    }
    if let Err(e) = lab::install_signal_cleanup() {
        eprintln!("interop: {e:#}");
        return ExitCode::from(EXIT_SETUP);
    }
    install_panic_hook();
    for swept in lab::sweep_stale() {
        eprintln!("interop: removed leftover {swept} of a dead harness run");
    }
    if let Err(e) = check_tools() {
        eprintln!("interop: {e:#}");
        return ExitCode::from(EXIT_SETUP);
    }
    if let Some(dir) = &args.keep_logs {
        if let Err(e) = std::fs::create_dir_all(dir) {
            eprintln!("interop: --keep-logs {}: {e}", dir.display());
            return ExitCode::from(EXIT_SETUP);
        }
    }
    match &args.cmd {
        Cmd::Selfcheck => run_suite(&args, HubKind::StrongSwan),
        Cmd::BenchDataplane => {
            let opts = bench_dataplane::Options {
                seconds: args.seconds,
            };
            match bench_dataplane::run(&opts) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("interop: bench-dataplane: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Cmd::BenchIke(opts) => {
            let bins = match Binaries::locate() {
                Ok(b) => b,
                Err(e) => {
                    eprintln!("interop: {e:#}");
                    return ExitCode::from(EXIT_SETUP);
                }
            };
            match bench_ike::run(opts, &bins) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("bench-ike: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Cmd::Run | Cmd::Demo => {
            let bins = match Binaries::locate() {
                Ok(b) => b,
                Err(e) => {
                    eprintln!("interop: {e:#}");
                    return ExitCode::from(EXIT_SETUP);
                }
            };
            if args.cmd == Cmd::Run {
                return run_suite(&args, HubKind::Anyhub(&bins));
            }
            println!("== 1. one anyhubd: a strongSwan site pings through its tunnel ==");
            let outcome = run_one(&cases::demo_case(), HubKind::Anyhub(&bins), None, true);
            print_outcome("demo", &outcome);
            if outcome.failure.is_some() {
                return ExitCode::FAILURE;
            }
            println!(
                "\n== 2. a fleet: three anyhubd on one anycast address; the site's tunnel, \
                 made with node 1, carries traffic on every node and survives node 1's death =="
            );
            let outcome = sync_cases::demo(&bins);
            print_outcome("demo-fleet", &outcome);
            if outcome.failure.is_some() {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            }
        }
        Cmd::List => unreachable!("handled above"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Result<Args> {
        parse_args(s.split_whitespace().map(String::from))
    }

    #[test]
    fn parses_subcommands() {
        let a = args("run --filter ike- --keep-logs /tmp/x").unwrap();
        assert_eq!(a.cmd, Cmd::Run);
        assert_eq!(a.filter.as_deref(), Some("ike-"));
        assert_eq!(a.keep_logs, Some(PathBuf::from("/tmp/x")));
        assert_eq!(args("list").unwrap().cmd, Cmd::List);
        assert!(args("list --filter x").is_err());
        assert!(args("run --filter").is_err());
        assert!(args("frobnicate").is_err());
        assert!(args("").is_err());
        assert_eq!(args("bench-dataplane --seconds 3").unwrap().seconds, 3);
        assert!(args("bench-dataplane --seconds 0").is_err());
        assert!(args("run --seconds 3").is_err());
    }
}
