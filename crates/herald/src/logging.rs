//! The server's log lines: `tracing`'s plain format, with every field's value escaped. Log
//! lines carry what others sent (a refused token's header, an auth backend's reason, a
//! broker's error): a line break or a terminal escape in one must not start a forged line or
//! move the operator's terminal. Characters that [`herald_core::ids::hides_text`] are
//! written as Rust escapes (`\n`, `\u{1b}`).

use std::fmt::{self, Write};

use tracing_subscriber::field::MakeExt;

/// Sends log lines at or above `filter` to standard error (coloured on a terminal).
pub fn init(filter: tracing_subscriber::EnvFilter) {
    let fields = tracing_subscriber::fmt::format::debug_fn(|w, field, value| {
        let text = format!("{value:?}");
        if field.name() != "message" {
            write!(w, "{}=", field.name())?;
        }
        write!(w, "{}", Escaped(&text))
    })
    .delimited(" ");
    use std::io::IsTerminal;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colours for a terminal, none in a file or a pipe.
        .with_ansi(std::io::stderr().is_terminal())
        .fmt_fields(fields)
        .init();
}

/// `text` with what hides text escaped.
struct Escaped<'a>(&'a str);

impl fmt::Display for Escaped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for c in self.0.chars() {
            if herald_core::ids::hides_text(c) {
                write!(f, "{}", c.escape_default())?;
            } else {
                f.write_char(c)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::Escaped;

    #[test]
    fn what_hides_text_is_escaped_and_the_rest_kept() {
        let forged = "x\r\n2026-01-01T00:00:00Z  WARN herald: FORGED\u{1b}[2J \u{202e}Zoë";
        assert_eq!(
            Escaped(forged).to_string(),
            "x\\r\\n2026-01-01T00:00:00Z  WARN herald: FORGED\\u{1b}[2J \\u{202e}Zoë"
        );
    }
}
