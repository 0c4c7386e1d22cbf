//! Progress of the long steps on stderr: an indicatif bar on a terminal, and where stderr is a
//! file or a pipe (CI logs, `2> log`), a plain line at every tenth of the work instead, so the
//! log still shows how far a run got without filling up with redraws.

use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// One bar over `len` units of work; every method is a no-op when the bar is disabled.
#[derive(Debug)]
pub(crate) struct Progress {
    bar: Option<ProgressBar>,
    label: String,
    len: u64,
    /// The last tenth printed in plain mode.
    tenth: u64,
}

impl Progress {
    /// A bar labelled `label` (`distill`, `gptq`), drawn only when `enabled`.
    pub(crate) fn new(label: &str, len: u64, enabled: bool) -> Progress {
        let bar = enabled.then(|| {
            let bar = ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::stderr());
            let style = ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} {msg} ({elapsed}, {eta} left)")
                .expect("the template is valid")
                .progress_chars("=> ");
            bar.set_style(style);
            bar.set_prefix(label.to_owned());
            bar.enable_steady_tick(Duration::from_millis(500));
            bar
        });
        Progress { bar, label: label.to_owned(), len, tenth: 0 }
    }

    /// Changes the amount of work (a time budget resized the schedule).
    pub(crate) fn set_length(&mut self, len: u64) {
        self.len = len;
        self.tenth = 0;
        if let Some(bar) = &self.bar {
            bar.set_length(len);
        }
    }

    /// Moves to `pos` with a short status `message` (built only when something shows it).
    pub(crate) fn set(&mut self, pos: u64, message: impl FnOnce() -> String) {
        let Some(bar) = &self.bar else { return };
        if bar.is_hidden() {
            let tenth = (pos.min(self.len) * 10).checked_div(self.len).unwrap_or(10);
            if tenth > self.tenth {
                self.tenth = tenth;
                eprintln!("{} {pos}/{} {}", self.label, self.len, message());
            }
        } else {
            bar.set_message(message());
        }
        bar.set_position(pos);
    }

    /// Removes the bar.
    pub(crate) fn finish(self) {
        if let Some(bar) = self.bar {
            bar.finish_and_clear();
        }
    }
}
