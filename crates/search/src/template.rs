//! `{name}` placeholders in text: the command-line templates of [`Study::emit`](crate::Study::emit)
//! and any other text a caller fills from a trial's parameters. `{{` and `}}` are literal braces;
//! a name is ASCII letters, digits, `_`, `-` and `.`.

/// A piece of a template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Piece {
    /// Text as it is (braces unescaped).
    Text(String),
    /// A `{name}` placeholder's name.
    Placeholder(String),
}

/// Splits `text` into text and placeholders, leaving out empty text pieces (so `""` gives no
/// pieces and `"{x}"` exactly one placeholder).
///
/// # Errors
/// The reason, naming the byte offset, for an unmatched `}`, an unclosed or empty placeholder, or
/// a character a name cannot hold.
///
/// ```
/// use lathe_search::template::{Piece, pieces};
/// assert_eq!(
///     pieces("--lr {lr} {{x}}").unwrap(),
///     [Piece::Text("--lr ".into()), Piece::Placeholder("lr".into()), Piece::Text(" {x}".into())]
/// );
/// assert!(pieces("{lr").unwrap_err().contains("not closed"));
/// ```
pub fn pieces(text: &str) -> Result<Vec<Piece>, String> {
    let mut pieces = Vec::new();
    let mut literal = String::new();
    let mut chars = text.char_indices().peekable();
    while let Some((offset, c)) = chars.next() {
        match c {
            '{' | '}' if chars.peek().map(|&(_, next)| next) == Some(c) => {
                chars.next();
                literal.push(c);
            }
            '}' => return Err(format!("unmatched `}}` at byte {offset} (write `}}}}` for a literal brace)")),
            '{' => {
                let mut name = String::new();
                loop {
                    match chars.next() {
                        Some((_, '}')) => break,
                        Some((_, c)) if c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.') => name.push(c),
                        Some((at, c)) => {
                            return Err(format!(
                                "character `{c}` at byte {at} inside a placeholder (write `{{{{` for a literal brace)"
                            ));
                        }
                        None => return Err(format!("placeholder opened at byte {offset} is not closed")),
                    }
                }
                if name.is_empty() {
                    return Err(format!("empty placeholder at byte {offset}"));
                }
                if !literal.is_empty() {
                    pieces.push(Piece::Text(std::mem::take(&mut literal)));
                }
                pieces.push(Piece::Placeholder(name));
            }
            c => literal.push(c),
        }
    }
    if !literal.is_empty() {
        pieces.push(Piece::Text(literal));
    }
    Ok(pieces)
}
