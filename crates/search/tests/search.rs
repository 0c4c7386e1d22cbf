//! lathe-search end to end: samplers, parallel studies, logs and resumption, batch emit and
//! collect through `sh` and GNU parallel, Pareto fronts, successive halving and the table.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use lathe_search::{
    Direction, Error, Halving, Objective, Params, Space, Status, Study, TrialError, TrialInput, TrialRecord,
    TrialResult, Value, dominates, pareto_front,
};
use proptest::prelude::*;

type Outcome = Result<Vec<f64>, TrialError>;

fn space() -> Space {
    Space::new()
        .categorical("method", ["magnitude", "wanda 2:4"])
        .unwrap()
        .categorical("bits", [4, 8])
        .unwrap()
        .int("layers", 2, 6, 2)
        .unwrap()
        .float("sparsity", 0.25, 0.75)
        .unwrap()
        .log_float("lr", 1e-4, 1e-2)
        .unwrap()
}

/// A deterministic two-objective stand-in for compressing a model with `params`.
fn stand_in(params: &Params) -> Vec<f64> {
    let sparsity = params.f64("sparsity").unwrap();
    let bits = params.f64("bits").unwrap();
    let layers = params.f64("layers").unwrap();
    let lr = params.f64("lr").unwrap();
    let method = if params.str("method") == Some("magnitude") { 1.5 } else { 1.0 };
    let loss = method * sparsity * sparsity + 4.0 / (bits * bits) + (lr.log10() + 3.0).powi(2) / layers;
    let size = (1.0 - sparsity) * bits * layers;
    vec![loss, size]
}

fn objectives() -> [Objective; 2] {
    [Objective::minimize("loss"), Objective::minimize("size")]
}

/// Trials without their timing, which is the one field that may differ between equal runs.
fn untimed(trials: &[TrialRecord]) -> Vec<TrialRecord> {
    trials.iter().map(|trial| TrialRecord { seconds: 0.0, ..trial.clone() }).collect()
}

fn log_lines(path: &Path) -> usize {
    std::fs::read_to_string(path).unwrap().lines().filter(|line| !line.trim().is_empty()).count()
}

// ---------------------------------------------------------------------------------------------
// Samplers

#[test]
fn grid_covers_the_cartesian_product_exactly_once_in_a_fixed_order() {
    let space = space();
    let grid = space.grid(3).unwrap();
    assert_eq!(grid.len(), 2 * 2 * 3 * 3 * 3);
    assert_eq!(grid, space.grid(3).unwrap());

    let distinct: BTreeSet<String> = grid.iter().map(Params::to_json).collect();
    assert_eq!(distinct.len(), grid.len(), "a combination repeats");
    let methods = [Value::from("magnitude"), Value::from("wanda 2:4")];
    let bits = [Value::Int(4), Value::Int(8)];
    let layers = [Value::Int(2), Value::Int(4), Value::Int(6)];
    let sparsities = [Value::Float(0.25), Value::Float(0.5), Value::Float(0.75)];
    let lrs = [
        Value::Float(1e-4),
        Value::Float((1e-4f64.ln() + (1e-2f64.ln() - 1e-4f64.ln()) * 0.5).exp()),
        Value::Float(1e-2),
    ];
    let mut expected = Vec::new();
    for method in &methods {
        for bit in &bits {
            for layer in &layers {
                for sparsity in &sparsities {
                    for lr in &lrs {
                        expected.push(
                            Params::new()
                                .with("method", method.clone())
                                .with("bits", bit.clone())
                                .with("layers", layer.clone())
                                .with("sparsity", sparsity.clone())
                                .with("lr", lr.clone()),
                        );
                    }
                }
            }
        }
    }
    // The last declared parameter varies fastest.
    assert_eq!(grid, expected);
    assert!((grid[1].f64("lr").unwrap() - 1e-3).abs() < 1e-15);

    assert_eq!(Space::new().grid(5).unwrap(), [Params::new()]);
    assert_eq!(Space::new().float("x", 2.0, 2.0).unwrap().grid(1).unwrap().len(), 1);
    assert!(matches!(space.grid(1), Err(Error::InvalidGrid { .. })));
    let huge = Space::new().int("a", 0, 99_999, 1).unwrap().int("b", 0, 99_999, 1).unwrap();
    assert!(matches!(huge.grid(2), Err(Error::InvalidGrid { .. })));
}

#[test]
fn random_is_deterministic_per_seed_and_stays_in_the_domain() {
    let space = space();
    let first = space.random(200, 42);
    assert_eq!(first, space.random(200, 42));
    assert_eq!(&first[..50], &space.random(50, 42)[..], "a longer run extends a shorter one");
    let other = space.random(200, 43);
    assert_ne!(first, other);
    assert!(first.iter().zip(&other).filter(|(a, b)| a == b).count() < 5);

    let mut log_lrs = Vec::new();
    for params in &first {
        assert!(["magnitude", "wanda 2:4"].contains(&params.str("method").unwrap()));
        assert!([4, 8].contains(&params.i64("bits").unwrap()));
        assert!([2, 4, 6].contains(&params.i64("layers").unwrap()));
        let sparsity = params.f64("sparsity").unwrap();
        assert!((0.25..=0.75).contains(&sparsity) && matches!(params.get("sparsity"), Some(Value::Float(_))));
        let lr = params.f64("lr").unwrap();
        assert!((1e-4..=1e-2).contains(&lr));
        log_lrs.push(lr.log10());
    }
    // Log-uniform: about half the draws fall below 1e-3, the geometric middle.
    let below = log_lrs.iter().filter(|&&log| log < -3.0).count();
    assert!((70..130).contains(&below), "{below} of 200 below the log midpoint");
    let every_method: BTreeSet<&str> = first.iter().map(|params| params.str("method").unwrap()).collect();
    assert_eq!(every_method.len(), 2);
}

#[test]
fn ill_defined_spaces_are_errors_naming_the_parameter() {
    let cases: Vec<(Result<Space, Error>, &str)> = vec![
        (Space::new().categorical::<&str>("c", []), "c"),
        (Space::new().categorical("d", [1, 1]), "d"),
        (Space::new().categorical("n", [f64::NAN]), "n"),
        (Space::new().int("i", 3, 1, 1), "i"),
        (Space::new().int("s", 0, 4, 0), "s"),
        (Space::new().float("f", 1.0, f64::INFINITY), "f"),
        (Space::new().log_float("l", 0.0, 1.0), "l"),
        (Space::new().int("trial", 0, 1, 1), "trial"),
        (Space::new().int("a b", 0, 1, 1), "a b"),
        (Space::new().int("x", 0, 1, 1).unwrap().float("x", 0.0, 1.0), "x"),
    ];
    for (result, name) in cases {
        match result {
            Err(Error::InvalidParameter { name: found, reason }) => {
                assert_eq!(found, name);
                assert!(!reason.is_empty() && !reason.ends_with('.'));
            }
            other => panic!("{name}: expected InvalidParameter, got {other:?}"),
        }
    }
}

#[test]
fn values_round_trip_through_json_with_their_kind() {
    let params = Params::new().with("a", 3).with("b", 3.0).with("c", "3").with("d", 1.2345678901234567e-5);
    let json = params.to_json();
    assert!(json.starts_with(r#"{"a":3,"b":3.0,"c":"3","d":"#), "{json}");
    let back: Params = serde_json::from_str(&json).unwrap();
    assert_eq!(back, params);
    assert_eq!(back.get("b"), Some(&Value::Float(3.0)));
    for params in space().random(500, 7) {
        assert_eq!(serde_json::from_str::<Params>(&params.to_json()).unwrap(), params);
    }
}

// ---------------------------------------------------------------------------------------------
// Studies

#[test]
fn results_do_not_depend_on_the_concurrency_limit() {
    let configs = space().random(40, 5);
    let run = |concurrency: usize| {
        let study = Study::new(objectives()).unwrap().concurrency(concurrency);
        let report = study.run(&configs, |trial: &TrialInput<'_>| -> Outcome { Ok(stand_in(trial.params)) }).unwrap();
        assert_eq!(report.evaluated, 40);
        let ids: Vec<u64> = report.trials.iter().map(|trial| trial.id).collect();
        assert_eq!(ids, (0..40).collect::<Vec<u64>>());
        report
    };
    let serial = run(1);
    for concurrency in [2, 3, 8, 100] {
        let parallel = run(concurrency);
        assert_eq!(untimed(&parallel.trials), untimed(&serial.trials), "concurrency {concurrency}");
        assert_eq!(parallel.pareto_ids(), serial.pareto_ids());
    }
    for (trial, params) in serial.trials.iter().zip(&configs) {
        assert_eq!(trial.values, stand_in(params));
    }
}

#[test]
fn failures_are_logged_and_not_rerun_unless_asked() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("nested/study.jsonl");
    let configs = Space::new().int("x", 0, 5, 1).unwrap().grid(2).unwrap();
    let calls = AtomicUsize::new(0);
    let objective = |trial: &TrialInput<'_>| -> Outcome {
        calls.fetch_add(1, Ordering::SeqCst);
        match trial.params.i64("x").unwrap() {
            1 => Err(TrialError::Failed("diverged".into())),
            2 => panic!("out of memory at x = 2"),
            3 => Ok(vec![1.0]),
            4 => Ok(vec![f64::NAN, 1.0]),
            x => Ok(vec![x as f64, 1.0]),
        }
    };
    let study = Study::new(objectives()).unwrap().log(&log).concurrency(2);
    let report = study.run(&configs, objective).unwrap();
    let statuses: Vec<Status> = report.trials.iter().map(|trial| trial.status).collect();
    use Status::{Complete, Failed};
    assert_eq!(statuses, [Complete, Failed, Failed, Failed, Failed, Complete]);
    let messages: Vec<&str> = report.trials.iter().map(|trial| trial.message.as_deref().unwrap_or("")).collect();
    assert_eq!(messages[1], "diverged");
    assert!(messages[2].contains("panicked") && messages[2].contains("out of memory"));
    assert_eq!(messages[3], "objective returned 1 values for 2 objectives");
    assert_eq!(messages[4], "objective 0 is NaN");
    assert_eq!(log_lines(&log), 6);

    calls.store(0, Ordering::SeqCst);
    let again = study.run(&configs, objective).unwrap();
    assert_eq!((calls.load(Ordering::SeqCst), again.resumed), (0, 6));
    assert_eq!(untimed(&again.trials), untimed(&report.trials));

    let retry = study.clone().retry_failed(true).run(&configs, objective).unwrap();
    assert_eq!((calls.load(Ordering::SeqCst), retry.evaluated, retry.resumed), (4, 4, 2));
    // The reruns append new lines; the latest line of each trial wins when read back.
    assert_eq!(log_lines(&log), 10);
    assert_eq!(untimed(&study.load(&configs).unwrap().trials), untimed(&retry.trials));
}

#[test]
fn an_aborted_study_resumes_without_rerunning_finished_trials() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("study.jsonl");
    let configs = space().random(12, 11);
    let study = Study::new(objectives()).unwrap().log(&log);
    let calls = AtomicUsize::new(0);
    let seen = Mutex::new(Vec::new());
    let abort_after = 5;
    let result = study.run(&configs, |trial: &TrialInput<'_>| -> Outcome {
        seen.lock().unwrap().push(trial.id);
        if calls.fetch_add(1, Ordering::SeqCst) == abort_after {
            return Err(TrialError::Abort("node preempted".into()));
        }
        Ok(stand_in(trial.params))
    });
    match result {
        Err(Error::Aborted { id, message }) => assert_eq!((id, message.as_str()), (5, "node preempted")),
        other => panic!("expected Aborted, got {other:?}"),
    }
    assert_eq!(log_lines(&log), abort_after);

    seen.lock().unwrap().clear();
    let resumed = study
        .run(&configs, |trial: &TrialInput<'_>| -> Outcome {
            seen.lock().unwrap().push(trial.id);
            Ok(stand_in(trial.params))
        })
        .unwrap();
    assert_eq!(*seen.lock().unwrap(), (5..12).collect::<Vec<u64>>());
    assert_eq!((resumed.evaluated, resumed.resumed), (7, 5));
    assert_eq!(log_lines(&log), 12);

    let uninterrupted = Study::new(objectives())
        .unwrap()
        .run(&configs, |trial: &TrialInput<'_>| -> Outcome { Ok(stand_in(trial.params)) })
        .unwrap();
    assert_eq!(untimed(&resumed.trials), untimed(&uninterrupted.trials));
}

#[test]
fn a_log_torn_mid_line_resumes_by_rerunning_only_the_torn_trial() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("study.jsonl");
    let configs = space().random(8, 3);
    let study = Study::new(objectives()).unwrap().log(&log).concurrency(3);
    let objective = |trial: &TrialInput<'_>| -> Outcome { Ok(stand_in(trial.params)) };
    let full = study.run(&configs, objective).unwrap();

    // Cut the last line in the middle, as a kill during the write would.
    let text = std::fs::read_to_string(&log).unwrap();
    let last_start = text.trim_end().rfind('\n').unwrap() + 1;
    let torn_id: u64 = serde_json::from_str::<serde_json::Value>(&text[last_start..]).unwrap()["id"].as_u64().unwrap();
    std::fs::write(&log, &text[..last_start + 17]).unwrap();

    let calls = Mutex::new(Vec::new());
    let resumed = study
        .run(&configs, |trial: &TrialInput<'_>| -> Outcome {
            calls.lock().unwrap().push(trial.id);
            Ok(stand_in(trial.params))
        })
        .unwrap();
    assert_eq!(*calls.lock().unwrap(), [torn_id]);
    assert_eq!((resumed.evaluated, resumed.resumed), (1, 7));
    assert_eq!(untimed(&resumed.trials), untimed(&full.trials));
    // The torn bytes are gone: every line parses and each trial appears once.
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.ends_with('\n'));
    assert_eq!(text.lines().count(), 8);
    for line in text.lines() {
        serde_json::from_str::<serde_json::Value>(line).unwrap();
    }
}

#[test]
fn aborts_under_concurrency_lose_no_finished_trial() {
    let configs = space().random(30, 21);
    let uninterrupted = Study::new(objectives())
        .unwrap()
        .run(&configs, |trial: &TrialInput<'_>| -> Outcome { Ok(stand_in(trial.params)) })
        .unwrap();
    for (concurrency, abort_at) in [(2, 0), (2, 13), (4, 7), (8, 29)] {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("study.jsonl");
        let study = Study::new(objectives()).unwrap().log(&log).concurrency(concurrency);
        let calls = AtomicUsize::new(0);
        let aborted = study.run(&configs, |trial: &TrialInput<'_>| -> Outcome {
            if calls.fetch_add(1, Ordering::SeqCst) == abort_at {
                return Err(TrialError::Abort("preempted".into()));
            }
            Ok(stand_in(trial.params))
        });
        assert!(matches!(aborted, Err(Error::Aborted { .. })));
        // Every call but the aborting one finished and was logged, however the workers raced.
        let logged = log_lines(&log);
        assert_eq!(logged, calls.load(Ordering::SeqCst) - 1, "concurrency {concurrency}, abort at {abort_at}");
        let resumed = study.run(&configs, |trial: &TrialInput<'_>| -> Outcome { Ok(stand_in(trial.params)) }).unwrap();
        assert_eq!((resumed.evaluated, resumed.resumed), (30 - logged, logged));
        assert_eq!(untimed(&resumed.trials), untimed(&uninterrupted.trials));
    }
}

const KILL_CHILD_LOG: &str = "LATHE_SEARCH_TEST_KILL_LOG";
const KILL_AT: u64 = 4;
const KILL_EXIT_CODE: i32 = 17;

#[test]
fn a_killed_process_resumes_without_rerunning_finished_trials() {
    let configs = space().random(10, 99);
    let objective = |trial: &TrialInput<'_>| -> Outcome { Ok(stand_in(trial.params)) };
    if let Some(log) = std::env::var_os(KILL_CHILD_LOG) {
        // The child: exit abruptly (no unwinding, no destructors) while trial KILL_AT runs.
        let study = Study::new(objectives()).unwrap().log(log);
        let _ = study.run(&configs, |trial: &TrialInput<'_>| -> Outcome {
            if trial.id == KILL_AT {
                std::process::exit(KILL_EXIT_CODE);
            }
            objective(trial)
        });
        std::process::exit(0);
    }
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("study.jsonl");
    let status = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "a_killed_process_resumes_without_rerunning_finished_trials", "--test-threads", "1"])
        .env(KILL_CHILD_LOG, &log)
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert_eq!(status.code(), Some(KILL_EXIT_CODE), "the child was not killed inside the objective");
    assert_eq!(log_lines(&log), KILL_AT as usize);

    let calls = Mutex::new(Vec::new());
    let study = Study::new(objectives()).unwrap().log(&log);
    let resumed = study
        .run(&configs, |trial: &TrialInput<'_>| -> Outcome {
            calls.lock().unwrap().push(trial.id);
            objective(trial)
        })
        .unwrap();
    assert_eq!(*calls.lock().unwrap(), (KILL_AT..10).collect::<Vec<u64>>());
    assert_eq!(resumed.resumed, KILL_AT as usize);
}

#[test]
fn a_log_from_another_study_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("study.jsonl");
    let objective = |trial: &TrialInput<'_>| -> Outcome { Ok(stand_in(trial.params)) };
    Study::new(objectives()).unwrap().log(&log).run(&space().random(3, 1), objective).unwrap();

    match Study::new(objectives()).unwrap().log(&log).run(&space().random(3, 2), objective) {
        Err(Error::ResumeMismatch { id, path, .. }) => assert_eq!((id, path), (0, log.clone())),
        other => panic!("expected ResumeMismatch, got {other:?}"),
    }
    let renamed = [Objective::minimize("loss"), Objective::minimize("bytes")];
    match Study::new(renamed).unwrap().log(&log).run(&space().random(3, 1), objective) {
        Err(Error::ObjectiveMismatch { expected, found, .. }) => {
            assert_eq!(
                (expected, found),
                (vec!["loss".to_owned(), "bytes".into()], vec!["loss".to_owned(), "size".into()])
            )
        }
        other => panic!("expected ObjectiveMismatch, got {other:?}"),
    }

    // A damaged line that is not the last one is corruption, not a torn write.
    let text = std::fs::read_to_string(&log).unwrap();
    let damaged = text.replacen("\"status\"", "\"stat", 1);
    std::fs::write(&log, damaged).unwrap();
    match Study::new(objectives()).unwrap().log(&log).run(&space().random(3, 1), objective) {
        Err(Error::LogLine { line, .. }) => assert_eq!(line, 1),
        other => panic!("expected LogLine, got {other:?}"),
    }
}

#[test]
fn ill_defined_studies_are_errors() {
    assert!(matches!(Study::new([]), Err(Error::InvalidStudy { .. })));
    assert!(matches!(
        Study::new([Objective::minimize("a"), Objective::maximize("a")]),
        Err(Error::InvalidStudy { .. })
    ));
    assert!(matches!(Study::new([Objective::minimize("")]), Err(Error::InvalidStudy { .. })));
    let study = Study::new(objectives()).unwrap();
    let configs = space().random(2, 0);
    let objective = |_: &TrialInput<'_>| -> Outcome { Ok(vec![0.0, 0.0]) };
    for halving in [
        Halving::new(0.0, 1.0, 3),
        Halving::new(2.0, 1.0, 3),
        Halving::new(1.0, 9.0, 1),
        Halving { rank_by: 2, ..Halving::new(1.0, 9.0, 3) },
    ] {
        assert!(matches!(study.run_halving(&configs, &halving, objective), Err(Error::InvalidHalving { .. })));
    }
    assert!(matches!(study.collect(&configs, Path::new(".")), Err(Error::NoLog { .. })));
}

// ---------------------------------------------------------------------------------------------
// Batch: emit and collect

/// The template every emitted line follows: the trial writes its result file with `printf`.
/// `loss` is the sparsity, `size` the bit width; `note` (ignored by collect) echoes the method,
/// which holds a space and so tests the quoting.
fn result_template(results: &Path) -> String {
    format!(
        "printf '{{{{\"values\": {{{{\"loss\": %s, \"size\": %s}}}}, \"seconds\": 0.5, \"note\": \"%s\"}}}}' \
         {{sparsity}} {{bits}} {{method}} > {}/{{trial}}.json",
        results.display()
    )
}

fn batch_configs() -> Vec<Params> {
    Space::new()
        .categorical("method", ["magnitude", "wanda 2:4"])
        .unwrap()
        .categorical("bits", [4, 8])
        .unwrap()
        .float("sparsity", 0.5, 0.75)
        .unwrap()
        .grid(2)
        .unwrap()
}

fn batch_objective(trial: &TrialInput<'_>) -> Outcome {
    Ok(vec![trial.params.f64("sparsity").unwrap(), trial.params.f64("bits").unwrap()])
}

/// Checks a collected study: everything logged, nothing left to emit or run, the values the
/// in-process objective gives.
fn check_collected(study: &Study, configs: &[Params], results: &Path) {
    let collected = study.collect(configs, results).unwrap();
    assert_eq!(collected.collected, (0..configs.len() as u64).collect::<Vec<u64>>());
    assert!(collected.missing.is_empty() && collected.already_logged.is_empty());
    let note = std::fs::read_to_string(results.join("3.json")).unwrap();
    assert!(note.contains(&format!("\"note\": \"{}\"", configs[3].str("method").unwrap())), "{note}");

    assert!(study.emit(configs, "echo {trial}").unwrap().is_empty());
    let calls = AtomicUsize::new(0);
    let report = study
        .run(configs, |trial: &TrialInput<'_>| -> Outcome {
            calls.fetch_add(1, Ordering::SeqCst);
            batch_objective(trial)
        })
        .unwrap();
    assert_eq!((calls.load(Ordering::SeqCst), report.resumed), (0, configs.len()));
    let in_process = Study::new(objectives()).unwrap().run(configs, batch_objective).unwrap();
    for (collected, direct) in report.trials.iter().zip(&in_process.trials) {
        assert_eq!((collected.id, &collected.params, &collected.values), (direct.id, &direct.params, &direct.values));
        assert_eq!(collected.seconds, 0.5);
    }
    assert_eq!(report.pareto_ids(), in_process.pareto_ids());
}

#[test]
fn emitted_lines_run_by_sh_collect_into_the_same_study() {
    let dir = tempfile::tempdir().unwrap();
    let results = dir.path().join("results");
    std::fs::create_dir(&results).unwrap();
    let configs = batch_configs();
    let study = Study::new(objectives()).unwrap().log(dir.path().join("study.jsonl"));
    let lines = study.emit(&configs, &result_template(&results)).unwrap();
    assert_eq!(lines.len(), 8);
    assert!(lines[2].starts_with(
        r#"printf '{"values": {"loss": %s, "size": %s}, "seconds": 0.5, "note": "%s"}' 0.5 8 magnitude > "#
    ));
    assert!(lines[5].contains(" 0.75 4 'wanda 2:4' > ") && lines[5].ends_with("/5.json"), "{}", lines[5]);

    // Half the jobs run first: collect finds them and reports the rest missing, and emit
    // then lists only the missing ones.
    for line in &lines[..4] {
        let status = Command::new("sh").arg("-c").arg(line).status().unwrap();
        assert!(status.success(), "{line}");
    }
    let partial = study.collect(&configs, &results).unwrap();
    assert_eq!((partial.collected, partial.missing), (vec![0, 1, 2, 3], vec![4, 5, 6, 7]));
    let remaining = study.emit(&configs, &result_template(&results)).unwrap();
    assert_eq!(remaining, &lines[4..]);
    for line in &remaining {
        let status = Command::new("sh").arg("-c").arg(line).status().unwrap();
        assert!(status.success(), "{line}");
    }
    let rest = study.collect(&configs, &results).unwrap();
    assert_eq!((rest.collected, rest.already_logged), (vec![4, 5, 6, 7], vec![0, 1, 2, 3]));

    // A fresh log collects all eight at once and matches the in-process objective.
    let fresh = Study::new(objectives()).unwrap().log(dir.path().join("fresh.jsonl"));
    check_collected(&fresh, &configs, &results);
}

/// Whether `parallel` on the PATH is GNU parallel (moreutils ships another `parallel`).
fn gnu_parallel() -> bool {
    Command::new("parallel")
        .arg("--version")
        .output()
        .map(|output| String::from_utf8_lossy(&output.stdout).contains("GNU parallel"))
        .unwrap_or(false)
}

#[test]
fn emitted_lines_run_by_gnu_parallel_collect_into_the_same_study() {
    let dir = tempfile::tempdir().unwrap();
    let results = dir.path().join("results");
    std::fs::create_dir(&results).unwrap();
    let configs = batch_configs();
    let study = Study::new(objectives()).unwrap().log(dir.path().join("study.jsonl"));
    let lines = study.emit(&configs, &result_template(&results)).unwrap();
    let jobs = dir.path().join("jobs.txt");
    std::fs::write(&jobs, lines.join("\n") + "\n").unwrap();
    if gnu_parallel() {
        let status = Command::new("parallel")
            .args(["--will-cite", "-j", "4", "--halt", "now,fail=1", "-a"])
            .arg(&jobs)
            .status()
            .unwrap();
        assert!(status.success());
    } else {
        // Not silently skipped: without GNU parallel the same job file runs line by line in `sh`,
        // the way `parallel -a jobs.txt` would run each line.
        // Written to the stderr handle, which libtest does not capture, so the fallback shows.
        writeln!(std::io::stderr(), "note: GNU parallel is not installed; running {} with sh instead", jobs.display())
            .unwrap();
        let script = std::fs::read_to_string(&jobs).unwrap();
        let mut shell = Command::new("sh").stdin(Stdio::piped()).spawn().unwrap();
        shell.stdin.take().unwrap().write_all(script.as_bytes()).unwrap();
        assert!(shell.wait().unwrap().success());
    }
    check_collected(&study, &configs, &results);
}

#[test]
fn result_files_are_checked() {
    let dir = tempfile::tempdir().unwrap();
    let results = dir.path().join("results");
    let configs = batch_configs();
    let study = Study::new(objectives()).unwrap().log(dir.path().join("study.jsonl"));

    TrialResult::complete([("loss", 0.1), ("size", 4.0)]).with_seconds(2.0).write(&results, 0).unwrap();
    TrialResult::failed("killed by the scheduler").write(&results, 1).unwrap();
    let collected = study.collect(&configs, &results).unwrap();
    assert_eq!(collected.collected, [0, 1]);
    let loaded = study.load(&configs).unwrap();
    assert_eq!(loaded.trials.len(), 2);
    assert_eq!((loaded.trials[0].values.as_slice(), loaded.trials[0].seconds), (&[0.1, 4.0][..], 2.0));
    assert_eq!(loaded.trials[1].status, Status::Failed);
    assert_eq!(loaded.trials[1].message.as_deref(), Some("killed by the scheduler"));

    let cases = [
        (r#"{"values": {"loss": 1}}"#, "objectives"),
        (r#"{"values": {"loss": 1, "size": 2, "extra": 3}}"#, "objectives"),
        (r#"{"id": 9, "values": {"loss": 1, "size": 2}}"#, "says id 9"),
        (r#"{"values": {"loss": 1, "size": 2}, "seconds": -1}"#, "seconds"),
        (r#"{"values": {"loss": "low", "size": 2}}"#, "invalid type"),
        (r#"{"values": {"loss": 1, "size": 2"#, "EOF"),
    ];
    for (text, expected) in cases {
        std::fs::write(results.join("2.json"), text).unwrap();
        let error = study.collect(&configs, &results).unwrap_err();
        let message = error.to_string();
        assert!(message.contains("2.json") && message.contains(expected), "{text}: {message}");
    }
    // Nothing of the bad files reached the log.
    assert_eq!(study.load(&configs).unwrap().trials.len(), 2);
}

#[test]
fn emit_names_unknown_placeholders() {
    let study = Study::new(objectives()).unwrap();
    let error = study.emit(&batch_configs(), "run --x {sparsity} --y {depth}").unwrap_err();
    let message = error.to_string();
    assert!(message.contains("trial 0 has no parameter `depth`"), "{message}");
    let lines = study.emit(&batch_configs(), "{{{trial}}}").unwrap();
    assert_eq!(lines[7], "{7}");
}

// ---------------------------------------------------------------------------------------------
// Pareto fronts

use Direction::{Maximize as Max, Minimize as Min};

#[test]
fn pareto_front_of_hand_made_cases() {
    // Two objectives, both minimised: (3,3) is dominated by (2,2); (1,4) and (4,1) are extremes.
    let points = [[1.0, 4.0], [2.0, 2.0], [3.0, 3.0], [4.0, 1.0], [4.0, 4.0]];
    assert_eq!(pareto_front(&points, &[Min, Min]), [0, 1, 3]);
    // Mixed directions: minimise the first, maximise the second.
    assert_eq!(pareto_front(&points, &[Min, Max]), [0]);
    assert_eq!(pareto_front(&points, &[Max, Max]), [4]);
    assert_eq!(pareto_front(&points, &[Max, Min]), [3]);
    // Equal on one objective, better on the other, dominates; equal on both does not.
    let ties = [[1.0, 2.0], [1.0, 3.0], [1.0, 2.0], [0.5, 5.0]];
    assert_eq!(pareto_front(&ties, &[Min, Min]), [0, 2, 3]);
    assert!(!dominates(&ties[0], &ties[2], &[Min, Min]) && !dominates(&ties[2], &ties[0], &[Min, Min]));
    assert!(dominates(&ties[0], &ties[1], &[Min, Min]));
    // Three objectives (loss min, speed max, size min) with a duplicate on the front.
    let three = [
        [0.10, 100.0, 50.0],
        [0.20, 300.0, 20.0],
        [0.10, 100.0, 60.0], // dominated by 0 (larger)
        [0.20, 300.0, 20.0], // duplicate of 1
        [0.30, 250.0, 25.0], // dominated by 1
        [0.05, 50.0, 90.0],
        [0.30, 400.0, 90.0],
    ];
    assert_eq!(pareto_front(&three, &[Min, Max, Min]), [0, 1, 3, 5, 6]);
    // All equal: everyone is on the front; one point; none.
    assert_eq!(pareto_front(&[[1.0], [1.0], [1.0]], &[Max]), [0, 1, 2]);
    assert_eq!(pareto_front(&[[7.0, 1.0]], &[Min, Max]), [0]);
    assert!(pareto_front::<[f64; 2]>(&[], &[Min, Max]).is_empty());
    // Single objective: the front is the set of best values.
    assert_eq!(pareto_front(&[[3.0], [1.0], [2.0], [1.0]], &[Min]), [1, 3]);
}

#[test]
fn report_pareto_skips_failed_trials_and_marks_the_table() {
    let configs = Space::new().int("x", 0, 4, 1).unwrap().grid(2).unwrap();
    let study = Study::new([Objective::minimize("loss"), Objective::maximize("speed")]).unwrap();
    let report = study
        .run(&configs, |trial: &TrialInput<'_>| -> Outcome {
            match trial.params.i64("x").unwrap() {
                0 => Ok(vec![1.0, 10.0]),
                1 => Ok(vec![2.0, 20.0]),
                2 => Ok(vec![2.0, 5.0]),
                3 => Err(TrialError::Failed("loss | diverged".into())),
                _ => Ok(vec![2.0, 20.0]),
            }
        })
        .unwrap();
    assert_eq!(report.pareto_ids(), [0, 1, 4]);
    assert_eq!(report.best(0).map(|trial| trial.id), Some(0));
    assert_eq!(report.best(1).map(|trial| trial.id), Some(1));
    let table = report.table();
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 2 + 5);
    assert_eq!(lines[0], "| trial | status   | seconds | x   | loss (min) | speed (max) | pareto | message          |");
    assert!(lines[1].starts_with("|------:|----------|--------:|-----|-----------:|"));
    assert!(lines[2].starts_with("|     0 | complete |") && lines[2].contains("|          1 |          10 | *      |"));
    assert!(lines[4].contains("|          2 |           5 |        |"));
    assert!(
        lines[5].contains("| failed   |")
            && lines[5].contains("|          - |           - |        | loss \\| diverged |")
    );
    assert!(lines[6].contains("| *      |"));
}

proptest! {
    #[test]
    fn no_front_member_is_dominated_and_every_other_point_is(
        points in (1usize..=4).prop_flat_map(|dims| prop::collection::vec(prop::collection::vec(0i8..4, dims), 0..40)),
        maximize in prop::collection::vec(any::<bool>(), 4),
    ) {
        let dims = points.first().map_or(1, Vec::len);
        let directions: Vec<Direction> = maximize[..dims].iter().map(|&max| if max { Max } else { Min }).collect();
        let points: Vec<Vec<f64>> = points.iter().map(|point| point.iter().map(|&v| f64::from(v)).collect()).collect();
        let front = pareto_front(&points, &directions);
        let members: BTreeSet<usize> = front.iter().copied().collect();
        prop_assert!(front.windows(2).all(|pair| pair[0] < pair[1]));
        prop_assert!(points.is_empty() || !front.is_empty());
        for (index, point) in points.iter().enumerate() {
            if members.contains(&index) {
                prop_assert!(points.iter().all(|other| !dominates(other, point, &directions)));
                // Duplicates of a member are members too.
                for (twin, other) in points.iter().enumerate() {
                    prop_assert!(other != point || members.contains(&twin));
                }
            } else {
                prop_assert!(front.iter().any(|&member| dominates(&points[member], point, &directions)));
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Successive halving

/// A learning curve: configuration `x` converges to `(x - 5)^2 / 4` but starts at
/// `(x - 5)^2 / 4 + 8 / budget`, the same head start for all, so rankings hold at every budget.
fn curve(trial: &TrialInput<'_>) -> Outcome {
    let x = trial.params.f64("x").unwrap();
    Ok(vec![(x - 5.0).powi(2) / 4.0 + 8.0 / trial.budget.unwrap()])
}

#[test]
fn successive_halving_keeps_the_best_and_evaluates_n_over_eta_per_rung() {
    let configs = Space::new().int("x", 0, 8, 1).unwrap().grid(2).unwrap();
    let study = Study::new([Objective::minimize("loss")]).unwrap().concurrency(3);
    let budgets = Mutex::new(Vec::new());
    let report = study
        .run_halving(&configs, &Halving::new(1.0, 9.0, 3), |trial: &TrialInput<'_>| -> Outcome {
            budgets.lock().unwrap().push(trial.budget.unwrap());
            curve(trial)
        })
        .unwrap();
    let rungs: Vec<(f64, usize)> = report.rungs.iter().map(|rung| (rung.budget, rung.ids.len())).collect();
    assert_eq!(rungs, [(1.0, 9), (3.0, 3), (9.0, 1)]);
    assert_eq!(report.evaluated, 13);
    let per_budget = |budget: f64| budgets.lock().unwrap().iter().filter(|&&b| b == budget).count();
    assert_eq!((per_budget(1.0), per_budget(3.0), per_budget(9.0)), (9, 3, 1));
    // Rung 1 holds x = 4, 5, 6 (the best third), rung 2 the best of them.
    let rung1: BTreeSet<i64> =
        report.rungs[1].ids.iter().map(|&id| report.trials[id as usize].params.i64("x").unwrap()).collect();
    assert_eq!(rung1, [4, 5, 6].into());
    assert_eq!(report.rungs[2].ids, [12]);
    let winner = report.best(0).unwrap();
    assert_eq!((winner.id, winner.params.i64("x"), winner.budget), (12, Some(5), Some(9.0)));
    assert_eq!(report.pareto_ids(), [12]);
    assert!(report.table().contains("| budget |"));
}

#[test]
fn successive_halving_stops_at_the_max_budget_and_caps_it() {
    let configs = Space::new().int("x", 0, 9, 1).unwrap().grid(2).unwrap();
    let study = Study::new([Objective::maximize("score")]).unwrap();
    let negated = |trial: &TrialInput<'_>| -> Outcome { curve(trial).map(|values| vec![-values[0]]) };
    // 10 at 1, 5 at 2, 2 at 4: the budget reached the max before one was left.
    let report = study.run_halving(&configs, &Halving::new(1.0, 4.0, 2), negated).unwrap();
    let rungs: Vec<(f64, usize)> = report.rungs.iter().map(|rung| (rung.budget, rung.ids.len())).collect();
    assert_eq!(rungs, [(1.0, 10), (2.0, 5), (4.0, 2)]);
    let last: BTreeSet<i64> =
        report.rungs[2].ids.iter().map(|&id| report.trials[id as usize].params.i64("x").unwrap()).collect();
    assert_eq!(last, [4, 5].into());
    assert_eq!(report.best(0).unwrap().params.i64("x"), Some(5));
    // eta 3 from 1 to 5: the second rung runs at the cap, 5, not 3 * 3.
    let report = study.run_halving(&configs, &Halving::new(1.0, 5.0, 3), negated).unwrap();
    let rungs: Vec<(f64, usize)> = report.rungs.iter().map(|rung| (rung.budget, rung.ids.len())).collect();
    assert_eq!(rungs, [(1.0, 10), (3.0, 3), (5.0, 1)]);
    // Failed trials never advance; fewer survivors than n / eta is fine.
    let report = study
        .run_halving(&configs, &Halving::new(1.0, 9.0, 2), |trial: &TrialInput<'_>| -> Outcome {
            if trial.params.i64("x").unwrap() != 7 {
                Err(TrialError::Failed("diverged".into()))
            } else {
                negated(trial)
            }
        })
        .unwrap();
    let rungs: Vec<(f64, usize)> = report.rungs.iter().map(|rung| (rung.budget, rung.ids.len())).collect();
    assert_eq!(rungs, [(1.0, 10), (2.0, 1)]);
}

#[test]
fn successive_halving_resumes_mid_rung() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("halving.jsonl");
    let configs = Space::new().int("x", 0, 8, 1).unwrap().grid(2).unwrap();
    let study = Study::new([Objective::minimize("loss")]).unwrap().log(&log);
    let halving = Halving::new(1.0, 9.0, 3);
    let calls = AtomicUsize::new(0);
    // Abort during the second trial of rung 1 (the 11th call).
    let aborted = study.run_halving(&configs, &halving, |trial: &TrialInput<'_>| -> Outcome {
        if calls.fetch_add(1, Ordering::SeqCst) == 10 {
            return Err(TrialError::Abort("preempted".into()));
        }
        curve(trial)
    });
    assert!(matches!(aborted, Err(Error::Aborted { id: 10, .. })), "{aborted:?}");
    assert_eq!(log_lines(&log), 10);

    let ids = Mutex::new(Vec::new());
    let resumed = study
        .run_halving(&configs, &halving, |trial: &TrialInput<'_>| -> Outcome {
            ids.lock().unwrap().push(trial.id);
            curve(trial)
        })
        .unwrap();
    assert_eq!(*ids.lock().unwrap(), [10, 11, 12]);
    assert_eq!((resumed.evaluated, resumed.resumed), (3, 10));
    let fresh = Study::new([Objective::minimize("loss")]).unwrap().run_halving(&configs, &halving, curve).unwrap();
    assert_eq!(untimed(&resumed.trials), untimed(&fresh.trials));
    assert_eq!(resumed.rungs, fresh.rungs);
}
