//! Studies: running trials in parallel, logging, resuming and successive halving.

use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::log::{self, Contents, Writer};
use crate::pareto::{Direction, Objective, pareto_front};
use crate::space::Params;

/// What the objective closure is given for one trial.
#[derive(Debug, Clone, Copy)]
pub struct TrialInput<'a> {
    /// The trial id: the configuration's index for [`Study::run`], a running count over the rungs
    /// for [`Study::run_halving`].
    pub id: u64,
    /// The configuration to evaluate.
    pub params: &'a Params,
    /// The budget (epochs, steps, calibration samples ...) under successive halving, else `None`.
    pub budget: Option<f64>,
}

/// Why the objective did not return values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TrialError {
    /// This configuration failed (diverged, out of memory ...): the trial is logged as failed and
    /// the study goes on.
    Failed(String),
    /// Stop the whole study: no new trial starts, running ones finish and are logged, and
    /// [`Study::run`] returns [`Error::Aborted`]. This trial is not logged, so a resumed study
    /// runs it again.
    Abort(String),
}

/// How a logged trial ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// The objective returned one finite value per objective.
    Complete,
    /// The objective returned [`TrialError::Failed`], panicked, or returned the wrong number of
    /// values or a non-finite one.
    Failed,
}

/// One finished trial, as logged.
#[derive(Debug, Clone, PartialEq)]
pub struct TrialRecord {
    /// The trial id.
    pub id: u64,
    /// Its parameters.
    pub params: Params,
    /// Its budget under successive halving.
    pub budget: Option<f64>,
    /// One value per objective in the study's order; empty when failed.
    pub values: Vec<f64>,
    /// Complete or failed.
    pub status: Status,
    /// Wall-clock seconds the objective took (as reported by the trial for collected results).
    pub seconds: f64,
    /// Why it failed.
    pub message: Option<String>,
}

impl TrialRecord {
    /// Whether the trial completed.
    pub fn is_complete(&self) -> bool {
        self.status == Status::Complete
    }
}

/// One rung of successive halving: the budget and the trials evaluated at it.
#[derive(Debug, Clone, PartialEq)]
pub struct Rung {
    /// The budget every trial of the rung received.
    pub budget: f64,
    /// The trial ids of the rung, ascending.
    pub ids: Vec<u64>,
}

/// A finished study: every trial in id order.
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    /// The study's objectives.
    pub objectives: Vec<Objective>,
    /// Every trial of the study in id order.
    pub trials: Vec<TrialRecord>,
    /// The rungs of successive halving (empty for [`Study::run`]).
    pub rungs: Vec<Rung>,
    /// Objective calls made by this run.
    pub evaluated: usize,
    /// Trials taken from the log instead of being run.
    pub resumed: usize,
}

impl Report {
    /// The complete trials at the largest budget reached (all complete trials without budgets),
    /// the set [`Report::pareto_ids`] and [`Report::best`] compare.
    pub fn compared(&self) -> Vec<&TrialRecord> {
        let complete = self.trials.iter().filter(|trial| trial.is_complete());
        let top_budget = complete.clone().filter_map(|trial| trial.budget).reduce(f64::max);
        complete.filter(|trial| trial.budget == top_budget).collect()
    }

    /// The ids of the Pareto-optimal complete trials (ascending). Trials are compared at the same
    /// budget only: under successive halving, among those at the largest budget reached.
    pub fn pareto_ids(&self) -> Vec<u64> {
        let compared = self.compared();
        let directions: Vec<Direction> = self.objectives.iter().map(|objective| objective.direction).collect();
        let points: Vec<&[f64]> = compared.iter().map(|trial| trial.values.as_slice()).collect();
        pareto_front(&points, &directions).into_iter().map(|index| compared[index].id).collect()
    }

    /// The best trial on objective `index` among [`Report::compared`] (the lowest id among ties).
    pub fn best(&self, index: usize) -> Option<&TrialRecord> {
        let direction = self.objectives.get(index)?.direction;
        self.compared()
            .into_iter()
            .min_by(|a, b| direction.order(a.values[index], b.values[index]).then(a.id.cmp(&b.id)))
    }

    /// The study as a markdown table: one row per trial in id order with its status, budget
    /// (under successive halving), seconds, parameters (by name) and objective values (headed
    /// `name (min)` or `name (max)`, about 6 significant digits); the `pareto` column marks the
    /// [`Report::pareto_ids`] trials with `*`; a `message` column appears when a trial failed.
    pub fn table(&self) -> String {
        crate::table::render(self)
    }
}

/// Successive-halving settings: evaluate every configuration at `min_budget`, keep the best
/// `1/eta` (at least one) by objective `rank_by`, multiply the budget by `eta` (capped at
/// `max_budget`), and repeat until one configuration has been evaluated alone or a rung ran at
/// `max_budget`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Halving {
    /// The budget of the first rung, above 0.
    pub min_budget: f64,
    /// The largest budget, at least `min_budget`.
    pub max_budget: f64,
    /// The reduction factor, at least 2.
    pub eta: usize,
    /// The objective that ranks configurations (an index into the study's objectives).
    pub rank_by: usize,
}

impl Halving {
    /// Halving ranked by the first objective.
    pub fn new(min_budget: f64, max_budget: f64, eta: usize) -> Self {
        Halving { min_budget, max_budget, eta, rank_by: 0 }
    }

    fn validate(&self, n_objectives: usize) -> Result<()> {
        let invalid = |reason: String| Err(Error::InvalidHalving { reason });
        if !(self.min_budget.is_finite() && self.min_budget > 0.0) {
            return invalid(format!("min budget is {}, expected a finite number above 0", self.min_budget));
        }
        if !(self.max_budget.is_finite() && self.max_budget >= self.min_budget) {
            return invalid(format!(
                "max budget is {}, expected at least the min budget {}",
                self.max_budget, self.min_budget
            ));
        }
        if self.eta < 2 {
            return invalid(format!("eta is {}, expected at least 2", self.eta));
        }
        if self.rank_by >= n_objectives {
            return invalid(format!("rank_by is {} but the study has {n_objectives} objectives", self.rank_by));
        }
        Ok(())
    }
}

/// A study: objectives, an optional JSON-lines log, a concurrency limit.
///
/// Trials run on up to `concurrency` scoped threads; results do not depend on the limit (only the
/// measured seconds and the order of log lines, which follow completion). With a log, the worker
/// that ran a trial appends it as one line and flushes it before taking another trial, so a
/// killed study loses only the trials that were running; a run first reads the log and skips every trial already logged with the same id, parameters and
/// budget. Failed trials count as finished unless [`Study::retry_failed`] is set. A logged trial
/// with the same id but other parameters is an error ([`Error::ResumeMismatch`]): the log belongs
/// to another study.
#[derive(Debug, Clone)]
pub struct Study {
    objectives: Vec<Objective>,
    log: Option<PathBuf>,
    concurrency: usize,
    retry_failed: bool,
}

/// A trial waiting to run.
struct Pending<'a> {
    id: u64,
    params: &'a Params,
    budget: Option<f64>,
}

/// Why a batch stopped early: the first log write that failed, the lowest-id abort.
#[derive(Default)]
struct Failure {
    write: Option<Error>,
    abort: Option<(u64, String)>,
}

/// Locks a mutex whose holders never leave its data half-updated, so a poisoned lock is usable.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// What evaluating one trial gave.
enum Outcome {
    Finished(TrialRecord),
    Abort(String),
}

/// The log and counters of one run.
struct Session {
    contents: Contents,
    writer: Option<Writer>,
    evaluated: usize,
    resumed: usize,
}

impl Study {
    /// A study with these objectives (at least one, unique names), no log, concurrency 1.
    pub fn new(objectives: impl IntoIterator<Item = Objective>) -> Result<Self> {
        let objectives: Vec<Objective> = objectives.into_iter().collect();
        if objectives.is_empty() {
            return Err(Error::InvalidStudy { reason: "a study needs at least one objective".into() });
        }
        for (index, objective) in objectives.iter().enumerate() {
            if objective.name.is_empty() {
                return Err(Error::InvalidStudy { reason: format!("objective {index} has an empty name") });
            }
            if objectives[..index].iter().any(|earlier| earlier.name == objective.name) {
                return Err(Error::InvalidStudy { reason: format!("objective `{}` is listed twice", objective.name) });
            }
        }
        Ok(Study { objectives, log: None, concurrency: 1, retry_failed: false })
    }

    /// Logs to (and resumes from) this JSON-lines file; its folder is created when missing.
    pub fn log(mut self, path: impl Into<PathBuf>) -> Self {
        self.log = Some(path.into());
        self
    }

    /// Runs at most `concurrency` trials at once (0 is read as 1).
    pub fn concurrency(mut self, concurrency: usize) -> Self {
        self.concurrency = concurrency.max(1);
        self
    }

    /// Reruns trials the log records as failed instead of keeping them.
    pub fn retry_failed(mut self, retry: bool) -> Self {
        self.retry_failed = retry;
        self
    }

    /// The objectives.
    pub fn objectives(&self) -> &[Objective] {
        &self.objectives
    }

    /// The log file, if any.
    pub fn log_path(&self) -> Option<&Path> {
        self.log.as_deref()
    }

    /// Evaluates `configs` (trial `i` is `configs[i]`), skipping trials the log already holds.
    ///
    /// The objective returns one value per objective, in the study's order. A panic, a
    /// [`TrialError::Failed`], a wrong number of values or a non-finite value make a failed trial;
    /// [`TrialError::Abort`] stops the study with [`Error::Aborted`] after logging the trials that
    /// finished.
    pub fn run<F>(&self, configs: &[Params], objective: F) -> Result<Report>
    where
        F: Fn(&TrialInput<'_>) -> Result<Vec<f64>, TrialError> + Sync,
    {
        let mut session = self.open(true)?;
        let batch: Vec<Pending<'_>> = configs
            .iter()
            .enumerate()
            .map(|(index, params)| Pending { id: index as u64, params, budget: None })
            .collect();
        let trials = self.run_batch(&mut session, &batch, &objective)?;
        Ok(Report {
            objectives: self.objectives.clone(),
            trials,
            rungs: Vec::new(),
            evaluated: session.evaluated,
            resumed: session.resumed,
        })
    }

    /// Successive halving over `configs` (see [`Halving`]). Trial ids count up over the rungs:
    /// rung 0 holds ids `0..configs.len()`, the next rung the following ids, and so on. Failed
    /// trials never advance. Resuming replays finished rungs from the log, so the same survivors
    /// are chosen.
    pub fn run_halving<F>(&self, configs: &[Params], halving: &Halving, objective: F) -> Result<Report>
    where
        F: Fn(&TrialInput<'_>) -> Result<Vec<f64>, TrialError> + Sync,
    {
        halving.validate(self.objectives.len())?;
        let direction = self.objectives[halving.rank_by].direction;
        let mut session = self.open(true)?;
        let mut survivors: Vec<Params> = configs.to_vec();
        let mut budget = halving.min_budget;
        let mut next_id = 0u64;
        let mut trials = Vec::new();
        let mut rungs = Vec::new();
        while !survivors.is_empty() {
            let batch: Vec<Pending<'_>> = survivors
                .iter()
                .enumerate()
                .map(|(index, params)| Pending { id: next_id + index as u64, params, budget: Some(budget) })
                .collect();
            next_id += batch.len() as u64;
            let records = self.run_batch(&mut session, &batch, &objective)?;
            rungs.push(Rung { budget, ids: records.iter().map(|record| record.id).collect() });
            let done = survivors.len() == 1 || budget >= halving.max_budget;
            let mut ranked: Vec<&TrialRecord> = records.iter().filter(|record| record.is_complete()).collect();
            ranked.sort_by(|a, b| {
                direction.order(a.values[halving.rank_by], b.values[halving.rank_by]).then(a.id.cmp(&b.id))
            });
            let keep = (survivors.len() / halving.eta).max(1).min(ranked.len());
            survivors =
                if done { Vec::new() } else { ranked[..keep].iter().map(|record| record.params.clone()).collect() };
            trials.extend(records);
            budget = (budget * halving.eta as f64).min(halving.max_budget);
        }
        Ok(Report {
            objectives: self.objectives.clone(),
            trials,
            rungs,
            evaluated: session.evaluated,
            resumed: session.resumed,
        })
    }

    /// The study as the log holds it, without running anything: the trials of `configs` that are
    /// logged, in id order (for a table after [`Study::collect`]). For a [`Study::run_halving`]
    /// log, call `run_halving` again instead: it replays the log and runs nothing finished.
    pub fn load(&self, configs: &[Params]) -> Result<Report> {
        let session = self.open(false)?;
        let mut trials = Vec::new();
        for (index, params) in configs.iter().enumerate() {
            let pending = Pending { id: index as u64, params, budget: None };
            if let Some(record) = self.finished(&session.contents, &pending)? {
                trials.push(record.clone());
            }
        }
        let resumed = trials.len();
        Ok(Report { objectives: self.objectives.clone(), trials, rungs: Vec::new(), evaluated: 0, resumed })
    }

    /// Reads the log (if any) and, when `write`, opens it for appending.
    fn open(&self, write: bool) -> Result<Session> {
        let contents = match &self.log {
            Some(path) => log::read(path, &self.objectives)?,
            None => Contents::default(),
        };
        let writer = match (&self.log, write) {
            (Some(path), true) => Some(Writer::open(path, &contents)?),
            _ => None,
        };
        Ok(Session { contents, writer, evaluated: 0, resumed: 0 })
    }

    pub(crate) fn read_log(&self) -> Result<Contents> {
        Ok(self.open(false)?.contents)
    }

    pub(crate) fn open_writer(&self, operation: &'static str) -> Result<(Contents, Writer, &Path)> {
        let path = self.log.as_deref().ok_or(Error::NoLog { operation })?;
        let session = self.open(true)?;
        let writer = session.writer.ok_or(Error::NoLog { operation })?;
        Ok((session.contents, writer, path))
    }

    /// The logged record that stands for this trial, if it is finished.
    fn finished<'c>(&self, contents: &'c Contents, trial: &Pending<'_>) -> Result<Option<&'c TrialRecord>> {
        self.finished_record(contents, trial.id, trial.params, trial.budget)
    }

    pub(crate) fn finished_record<'c>(
        &self,
        contents: &'c Contents,
        id: u64,
        params: &Params,
        budget: Option<f64>,
    ) -> Result<Option<&'c TrialRecord>> {
        let Some(record) = contents.records.get(&id) else { return Ok(None) };
        if record.params != *params || record.budget != budget {
            let describe = |params: &Params, budget: Option<f64>| match budget {
                Some(budget) => format!("{} at budget {budget}", params.to_json()),
                None => params.to_json(),
            };
            return Err(Error::ResumeMismatch {
                path: self.log.clone().unwrap_or_default(),
                id,
                expected: describe(params, budget),
                found: describe(&record.params, record.budget),
            });
        }
        let keep = record.is_complete() || !self.retry_failed;
        Ok(keep.then_some(record))
    }

    /// Runs the trials of `batch` the log does not hold and returns all of them in id order.
    fn run_batch<F>(&self, session: &mut Session, batch: &[Pending<'_>], objective: &F) -> Result<Vec<TrialRecord>>
    where
        F: Fn(&TrialInput<'_>) -> Result<Vec<f64>, TrialError> + Sync,
    {
        let mut results: Vec<Option<TrialRecord>> = Vec::with_capacity(batch.len());
        let mut to_run = Vec::new();
        for (position, trial) in batch.iter().enumerate() {
            let logged = self.finished(&session.contents, trial)?.cloned();
            if logged.is_none() {
                to_run.push(position);
            }
            results.push(logged);
        }
        session.resumed += batch.len() - to_run.len();

        let next = AtomicUsize::new(0);
        let stop = AtomicBool::new(false);
        let failure: Mutex<Failure> = Mutex::new(Failure::default());
        let writer = Mutex::new(session.writer.as_mut());
        let evaluated = AtomicUsize::new(0);
        let n_objectives = self.objectives.len();
        let workers = self.concurrency.min(to_run.len());
        let finished: Mutex<Vec<(usize, TrialRecord)>> = Mutex::new(Vec::with_capacity(to_run.len()));
        std::thread::scope(|scope| {
            for _ in 0..workers {
                scope.spawn(|| {
                    while !stop.load(Ordering::SeqCst) {
                        let Some(&position) = to_run.get(next.fetch_add(1, Ordering::SeqCst)) else { break };
                        let trial = &batch[position];
                        let outcome = evaluate(trial, objective, n_objectives);
                        evaluated.fetch_add(1, Ordering::SeqCst);
                        match outcome {
                            Outcome::Finished(record) => {
                                // The worker logs its own trial before taking the next one, so a
                                // kill loses only the trials that were running.
                                let written = match lock(&writer).as_mut() {
                                    Some(writer) => writer.append(&record, &self.objectives),
                                    None => Ok(()),
                                };
                                if let Err(error) = written {
                                    stop.store(true, Ordering::SeqCst);
                                    lock(&failure).write.get_or_insert(error);
                                }
                                lock(&finished).push((position, record));
                            }
                            Outcome::Abort(message) => {
                                stop.store(true, Ordering::SeqCst);
                                let mut failure = lock(&failure);
                                if failure.abort.as_ref().is_none_or(|(first, _)| trial.id < *first) {
                                    failure.abort = Some((trial.id, message));
                                }
                            }
                        }
                    }
                });
            }
        });
        session.evaluated += evaluated.into_inner();
        for (position, record) in finished.into_inner().unwrap_or_else(PoisonError::into_inner) {
            results[position] = Some(record);
        }
        let Failure { abort, write: write_error } = failure.into_inner().unwrap_or_else(PoisonError::into_inner);
        if let Some(error) = write_error {
            return Err(error);
        }
        if let Some((id, message)) = abort {
            return Err(Error::Aborted { id, message });
        }
        // Every position is filled: logged before, or run to completion (no abort, no error).
        Ok(results.into_iter().flatten().collect())
    }
}

/// Runs the objective on one trial, turning panics and bad values into failed trials.
fn evaluate<F>(trial: &Pending<'_>, objective: &F, n_objectives: usize) -> Outcome
where
    F: Fn(&TrialInput<'_>) -> Result<Vec<f64>, TrialError> + Sync,
{
    let input = TrialInput { id: trial.id, params: trial.params, budget: trial.budget };
    let start = Instant::now();
    let result = panic::catch_unwind(AssertUnwindSafe(|| objective(&input)));
    let seconds = start.elapsed().as_secs_f64();
    let failure = match result {
        Ok(Ok(values)) if values.len() != n_objectives => {
            format!("objective returned {} values for {n_objectives} objectives", values.len())
        }
        Ok(Ok(values)) => match values.iter().position(|value| !value.is_finite()) {
            Some(index) => format!("objective {index} is {}", values[index]),
            None => {
                return Outcome::Finished(record(trial, values, Status::Complete, seconds, None));
            }
        },
        Ok(Err(TrialError::Failed(message))) => message,
        Ok(Err(TrialError::Abort(message))) => return Outcome::Abort(message),
        Err(payload) => {
            let text = payload
                .downcast_ref::<&str>()
                .map(|text| (*text).to_owned())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "non-string payload".to_owned());
            format!("objective panicked: {text}")
        }
    };
    Outcome::Finished(record(trial, Vec::new(), Status::Failed, seconds, Some(failure)))
}

fn record(trial: &Pending<'_>, values: Vec<f64>, status: Status, seconds: f64, message: Option<String>) -> TrialRecord {
    TrialRecord { id: trial.id, params: trial.params.clone(), budget: trial.budget, values, status, seconds, message }
}

/// The budget-free trial ids and params of `configs`, for emit and collect.
pub(crate) fn pending_ids(configs: &[Params]) -> impl Iterator<Item = (u64, &Params)> {
    configs.iter().enumerate().map(|(index, params)| (index as u64, params))
}
