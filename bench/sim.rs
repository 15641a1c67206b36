//! `pairfs_sim`: the deterministic whole-cluster simulation (see `pairfs::sim`).
//!
//! `pairfs_sim --seed S [--steps N]` runs one seed and prints a summary, `digest: <hex>` and
//! the verdict; `--seeds A..B` runs a range. A failure prints the seed, the step, the
//! invariant and the last trace lines, and the exit status is 1.

use clap::Parser;
use pairfs::sim::{self, Config, FAULT_KINDS};
use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::Instant;

#[derive(Parser)]
#[command(about = "Deterministic whole-cluster simulation of pairfs, power loss included")]
struct Args {
    /// One seed to run.
    #[arg(long)]
    seed: Option<u64>,
    /// A range of seeds, `A..B` (B excluded).
    #[arg(long)]
    seeds: Option<String>,
    /// Simulated steps per seed.
    #[arg(long, default_value_t = 2000)]
    steps: u64,
    /// Plant a bug: `skip-dir-fsync` skips the directory fsync after a rename.
    #[arg(long)]
    plant: Option<String>,
    /// Print the whole trace to stderr.
    #[arg(long)]
    verbose: bool,
}

fn parse_range(s: &str) -> Option<(u64, u64)> {
    let (a, b) = s.split_once("..")?;
    Some((a.trim().parse().ok()?, b.trim().parse().ok()?))
}

fn main() -> ExitCode {
    let args = Args::parse();
    let plant = match args.plant.as_deref() {
        None => false,
        Some("skip-dir-fsync") => true,
        Some(other) => {
            eprintln!("ERROR [INVALID]: unknown planted bug '{other}' (known: skip-dir-fsync)");
            return ExitCode::from(2);
        }
    };
    let (range, single) = match (&args.seed, &args.seeds) {
        (Some(s), None) => ((*s, *s + 1), true),
        (None, Some(r)) => match parse_range(r) {
            Some((a, b)) if a < b => ((a, b), false),
            _ => {
                eprintln!("ERROR [INVALID]: --seeds takes A..B with A < B");
                return ExitCode::from(2);
            }
        },
        _ => {
            eprintln!("ERROR [INVALID]: give --seed S or --seeds A..B");
            return ExitCode::from(2);
        }
    };
    let started = Instant::now();
    let mut failed = 0u64;
    let mut steps = 0u64;
    let mut faults: BTreeMap<&str, u64> = BTreeMap::new();
    for seed in range.0..range.1 {
        let cfg = Config {
            seed,
            steps: args.steps,
            plant_skip_dir_fsync: plant,
            verbose: args.verbose,
        };
        let r = match sim::run(cfg) {
            Ok(r) => r,
            Err(e) => {
                eprintln!("ERROR [INTERNAL]: seed {seed}: cannot set up the simulation: {e}");
                return ExitCode::from(1);
            }
        };
        steps += r.steps;
        for (k, n) in &r.faults {
            *faults.entry(k).or_default() += n;
        }
        let verdict = if r.failure.is_some() { "FAILED" } else { "ok" };
        if single {
            println!(
                "seed {seed}: {} steps, {} acknowledged, {} reads",
                r.steps, r.acked, r.reads
            );
        }
        println!("seed {seed} digest: {} {verdict}", r.digest);
        if let Some(f) = r.failure {
            failed += 1;
            println!("FAILED seed {seed} at step {}: {}", f.step, f.invariant);
            for line in &f.trace {
                println!("  {line}");
            }
        }
    }
    let secs = started.elapsed().as_secs_f64().max(1e-9);
    let listed: Vec<String> = FAULT_KINDS
        .iter()
        .map(|k| format!("{k} {}", faults.get(k).copied().unwrap_or(0)))
        .collect();
    println!("faults: {}", listed.join(", "));
    println!(
        "{steps} steps in {secs:.1} s ({:.0} simulated steps/s)",
        steps as f64 / secs
    );
    if !single {
        println!("sim: {} seeds, {failed} failed", range.1 - range.0);
    }
    if failed > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}
