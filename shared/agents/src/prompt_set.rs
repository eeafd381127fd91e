//! The system prompts in use: the built-in versioned ones, or replacements from a folder.

use std::path::{Path, PathBuf};

use crate::prompts;

/// The file names a prompts folder may hold; a missing file keeps the built-in prompt.
pub const PROMPT_FILES: [&str; 5] = ["planner.md", "strategy.md", "writer.md", "qa.md", "chat.md"];

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prompts {
    pub planner: String,
    pub strategy: String,
    pub writer: String,
    pub qa: String,
    pub chat: String,
}

impl Default for Prompts {
    fn default() -> Self {
        Self::builtin()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PromptsError {
    #[error("the prompts folder {path} cannot be read: {reason}")]
    Dir { path: PathBuf, reason: String },
    #[error("the prompt file {path} cannot be read: {reason}")]
    File { path: PathBuf, reason: String },
    #[error("the prompt file {path} is empty; delete it to use the built-in prompt")]
    Empty { path: PathBuf },
}

impl Prompts {
    /// The versioned prompts compiled in (prompts/*.v1.md).
    pub fn builtin() -> Self {
        Self {
            planner: prompts::PLANNER.to_owned(),
            strategy: prompts::STRATEGY.to_owned(),
            writer: prompts::WRITER.to_owned(),
            qa: prompts::QA.to_owned(),
            chat: prompts::CHAT.to_owned(),
        }
    }

    /// The built-in prompts, each replaced by the folder's file of the same role when there is
    /// one. Returns the names of the files used. A folder that cannot be read is an error, so a
    /// typo in the path is not silently ignored.
    pub fn from_dir(dir: &Path) -> Result<(Self, Vec<&'static str>), PromptsError> {
        let meta = std::fs::metadata(dir).map_err(|e| PromptsError::Dir {
            path: dir.to_owned(),
            reason: e.to_string(),
        })?;
        if !meta.is_dir() {
            return Err(PromptsError::Dir {
                path: dir.to_owned(),
                reason: "not a folder".into(),
            });
        }
        let mut out = Self::builtin();
        let mut used = Vec::new();
        for name in PROMPT_FILES {
            let path = dir.join(name);
            let text = match std::fs::read_to_string(&path) {
                Ok(t) => t,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => {
                    return Err(PromptsError::File {
                        path,
                        reason: e.to_string(),
                    });
                }
            };
            if text.trim().is_empty() {
                return Err(PromptsError::Empty { path });
            }
            let slot = match name {
                "planner.md" => &mut out.planner,
                "strategy.md" => &mut out.strategy,
                "writer.md" => &mut out.writer,
                "qa.md" => &mut out.qa,
                _ => &mut out.chat,
            };
            *slot = text;
            used.push(name);
        }
        Ok((out, used))
    }
}
