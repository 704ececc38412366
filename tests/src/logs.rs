//! A logger that keeps what memo's backends log, so tests can count the
//! messages of an outage (logged once, not once per call).

use std::sync::{Mutex, OnceLock};

/// Collects what memo's backends log, to count messages per outage.
#[derive(Debug)]
pub struct Logger {
    lines: Mutex<Vec<(log::Level, String)>>,
    /// Every line since the logger was installed, never cleared: for
    /// what memo logs once per process.
    history: Mutex<Vec<String>>,
}

impl Logger {
    /// Installs the logger, once per process, and returns it.
    pub fn install() -> &'static Logger {
        static LOGGER: OnceLock<Logger> = OnceLock::new();
        let logger = LOGGER.get_or_init(|| Logger {
            lines: Mutex::new(Vec::new()),
            history: Mutex::new(Vec::new()),
        });
        if log::set_logger(logger).is_ok() {
            log::set_max_level(log::LevelFilter::Info);
        }
        logger
    }

    /// Forgets the lines so far.
    pub fn clear(&self) {
        self.lock().clear();
    }

    /// How many lines of `level` were logged.
    pub fn count(&self, level: log::Level) -> usize {
        self.lock().iter().filter(|(l, _)| *l == level).count()
    }

    /// Every line so far, with its level.
    pub fn lines(&self) -> Vec<(log::Level, String)> {
        self.lock().clone()
    }

    /// How many lines containing `needle` were logged since the logger was
    /// installed, whoever cleared it since.
    pub fn ever_logged(&self, needle: &str) -> usize {
        self.history
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .iter()
            .filter(|line| line.contains(needle))
            .count()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<(log::Level, String)>> {
        self.lines
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl log::Log for Logger {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        metadata.target().starts_with("memo_runtime::backend")
    }

    fn log(&self, record: &log::Record<'_>) {
        if self.enabled(record.metadata()) {
            let line = record.args().to_string();
            self.history
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .push(line.clone());
            self.lock().push((record.level(), line));
        }
    }

    fn flush(&self) {}
}
