//! Progress display for long jobs. On a terminal, an indicatif bar. Anywhere
//! else (CI logs, `nohup`, pipes, where indicatif draws nothing) a plain line
//! at most every 30 s (`SAESCOPE_PROGRESS_SECS` to change it) with what is
//! done, the rate and the ETA, so a long harvest is never silent.

use std::io::{IsTerminal, Write};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle, TermLike};

/// A bar with `template` on a terminal; elsewhere periodic lines with
/// `log_template` (no bar); nothing when `hidden`.
pub fn bar(hidden: bool, template: &str, log_template: &str) -> anyhow::Result<ProgressBar> {
    if hidden {
        return Ok(ProgressBar::hidden());
    }
    if std::io::stderr().is_terminal() {
        let bar = ProgressBar::new(0);
        bar.set_style(ProgressStyle::with_template(template)?);
        return Ok(bar);
    }
    let every = std::env::var("SAESCOPE_PROGRESS_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(30.0f64);
    let lines = LogLines {
        every: Duration::from_secs_f64(every.max(0.0)),
        state: Mutex::new((None, String::new())),
    };
    let bar = ProgressBar::with_draw_target(
        None,
        ProgressDrawTarget::term_like_with_hz(Box::new(lines), 1),
    );
    bar.set_style(ProgressStyle::with_template(log_template)?);
    Ok(bar)
}

/// A `TermLike` that keeps the latest drawn line and prints it to stderr at
/// most once per `every`.
#[derive(Debug)]
struct LogLines {
    every: Duration,
    /// When a line was last printed, and the line being drawn.
    state: Mutex<(Option<Instant>, String)>,
}

impl TermLike for LogLines {
    fn width(&self) -> u16 {
        160
    }

    fn move_cursor_up(&self, _: usize) -> std::io::Result<()> {
        Ok(())
    }

    fn move_cursor_down(&self, _: usize) -> std::io::Result<()> {
        Ok(())
    }

    fn move_cursor_right(&self, _: usize) -> std::io::Result<()> {
        Ok(())
    }

    fn move_cursor_left(&self, _: usize) -> std::io::Result<()> {
        Ok(())
    }

    fn write_line(&self, s: &str) -> std::io::Result<()> {
        self.write_str(s)
    }

    fn write_str(&self, s: &str) -> std::io::Result<()> {
        if let Ok(mut state) = self.state.lock() {
            state.1.push_str(s.trim_start_matches('\r'));
        }
        Ok(())
    }

    fn clear_line(&self) -> std::io::Result<()> {
        if let Ok(mut state) = self.state.lock() {
            state.1.clear();
        }
        Ok(())
    }

    fn flush(&self) -> std::io::Result<()> {
        let Ok(mut state) = self.state.lock() else {
            return Ok(());
        };
        let line = std::mem::take(&mut state.1);
        let line = line.trim_end();
        let due = state.0.is_none_or(|last| last.elapsed() >= self.every);
        if due && !line.is_empty() {
            state.0 = Some(Instant::now());
            let mut err = std::io::stderr().lock();
            writeln!(err, "{line}")?;
        }
        Ok(())
    }
}

/// A pause after each unit of work (a harvest's shard, a training step, a
/// labelling batch) from `SAESCOPE_TEST_PAUSE_MS`. Tests stretch tiny jobs
/// with it so that kills land inside them; unset in normal use.
pub fn test_pause() -> Option<Duration> {
    std::env::var("SAESCOPE_TEST_PAUSE_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .map(Duration::from_millis)
}
