//! An error followed by all its causes, on one line: `transport error` alone hides why a
//! connection failed (`connect /run/x.sock: No such file or directory`). Causes whose text the
//! line already holds are not repeated (many errors quote their source in their own message).

use std::error::Error;
use std::fmt;

/// Displays `0` and its source chain as `error: cause: cause`.
pub(crate) struct Causes<'a>(pub &'a (dyn Error + 'static));

impl fmt::Display for Causes<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut line = self.0.to_string();
        let mut next = self.0.source();
        while let Some(cause) = next {
            let text = cause.to_string();
            if !text.is_empty() && !line.contains(&text) {
                line.push_str(": ");
                line.push_str(&text);
            }
            next = cause.source();
        }
        f.write_str(&line)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("transport error")]
    struct Transport(#[source] std::io::Error);

    #[derive(Debug, thiserror::Error)]
    #[error("cannot connect to CRI socket /x: {0}")]
    struct Connect(#[source] Transport);

    #[test]
    fn every_cause_once() {
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "No such file or directory");
        let e = Connect(Transport(io));
        assert_eq!(
            Causes(&e).to_string(),
            "cannot connect to CRI socket /x: transport error: No such file or directory"
        );
    }
}
