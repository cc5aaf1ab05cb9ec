//! A YAML stream read in bounded windows and cut into pieces as it is read (see
//! [`crate::stream`]), so that memory holds one window of text, not the file.
//!
//! Each window ends at a line break; its last piece may continue in the next window, so it is
//! carried over and cut again with what follows. Cutting is stateless from one piece to the
//! next (a piece starts at a `---` line or after a `...` line), which makes the pieces of the
//! windows exactly the pieces of the whole stream. A document larger than the window grows the
//! window until it ends: memory is bounded by the largest document, not by the stream.

use std::io::{self, Read};

use crate::stream::{Piece, pieces};

/// What the next window of a stream holds.
pub(crate) enum Window<'a> {
    /// Its complete pieces, in order, numbered with the lines of the whole stream.
    Pieces(Vec<Piece<'a>>),
    /// A line starting with `%` (a directive, or content that looks like one): the stream
    /// cannot be cut and must be read whole.
    Directives,
}

/// Reads a stream one window at a time.
pub(crate) struct Windows<R> {
    read: R,
    window: usize,
    /// The unread text: what the last window carried over, then what was read after it.
    buffer: Vec<u8>,
    /// The bytes at the start of `buffer` handed out by the last window.
    handed_out: usize,
    /// The line of the stream that `buffer` starts on.
    first_line: usize,
    eof: bool,
}

impl<R: Read> Windows<R> {
    /// Reads `read` `window` bytes at a time (at least one byte).
    pub(crate) fn new(read: R, window: usize) -> Self {
        Windows { read, window: window.max(1), buffer: Vec::new(), handed_out: 0, first_line: 1, eof: false }
    }

    /// The next window, `None` at the end of the stream. An error is one of reading, or text
    /// that is not UTF-8 (the error `fs::read_to_string` gives).
    pub(crate) fn next_window(&mut self) -> io::Result<Option<Window<'_>>> {
        let handed_out = &self.buffer[..self.handed_out];
        self.first_line += handed_out.iter().filter(|&&b| b == b'\n').count();
        self.buffer.drain(..self.handed_out);
        self.handed_out = 0;
        // After a document larger than the window, give the memory back.
        if self.buffer.capacity() > 2 * self.window && self.buffer.len() <= self.window {
            self.buffer.shrink_to(self.window);
        }
        let mut want = self.window;
        let end = loop {
            self.fill(want)?;
            if self.eof && self.buffer.is_empty() {
                return Ok(None);
            }
            let complete = if self.eof {
                self.buffer.len()
            } else {
                self.buffer.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1)
            };
            let text = std::str::from_utf8(&self.buffer[..complete]).map_err(|_| not_utf8())?;
            let Some(cut) = pieces(text) else { return Ok(Some(Window::Directives)) };
            // Before the end of the stream the last piece may go on in the next window.
            let keep = if self.eof { cut.len() } else { cut.len().saturating_sub(1) };
            if keep > 0 {
                break cut[..keep].iter().map(|p| p.text.len()).sum::<usize>();
            }
            // One piece fills the window: a document larger than it, read on until it ends
            // (doubling, so that a large document is cut in linear time).
            want = (self.buffer.len() + self.window).max(2 * self.buffer.len());
        };
        self.handed_out = end;
        let text = std::str::from_utf8(&self.buffer[..end]).expect("the window's text was checked to be UTF-8");
        let first_line = self.first_line;
        let cut = pieces(text).expect("the window's text was cut before");
        Ok(Some(Window::Pieces(
            cut.into_iter().map(|p| Piece { text: p.text, first_line: p.first_line + first_line - 1 }).collect(),
        )))
    }

    /// Reads until the buffer holds `want` bytes or the stream ends.
    fn fill(&mut self, want: usize) -> io::Result<()> {
        // Exactly: `read_to_end` alone would double the buffer past the window (up to 64 MiB
        // at once: a window as large as the address space is "read whole", not allocated).
        self.buffer.reserve_exact(want.saturating_sub(self.buffer.len()).min(64 << 20));
        while !self.eof && self.buffer.len() < want {
            let missing = (want - self.buffer.len()) as u64;
            let read = (&mut self.read).take(missing).read_to_end(&mut self.buffer)?;
            if (read as u64) < missing {
                self.eof = true;
            }
        }
        Ok(())
    }
}

/// The error of `fs::read_to_string` for text that is not UTF-8.
pub(crate) fn not_utf8() -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, "stream did not contain valid UTF-8")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every piece of `text` read `window` bytes at a time, as (first line, text).
    fn windowed(text: &str, window: usize) -> Option<Vec<(usize, String)>> {
        let mut windows = Windows::new(text.as_bytes(), window);
        let mut out = Vec::new();
        while let Some(w) = windows.next_window().unwrap() {
            match w {
                Window::Pieces(p) => out.extend(p.into_iter().map(|p| (p.first_line, p.text.to_owned()))),
                Window::Directives => return None,
            }
        }
        Some(out)
    }

    fn whole(text: &str) -> Vec<(usize, String)> {
        pieces(text).unwrap().into_iter().map(|p| (p.first_line, p.text.to_owned())).collect()
    }

    #[test]
    fn the_pieces_of_the_windows_are_the_pieces_of_the_stream() {
        let cases = [
            "a: 1\n---\nb: 2\n---\nc: 3\n".to_owned(),
            "---\na: 1\n...\n--- |\n  ---x\n  text\n---\t# c\nlast: no newline".to_owned(),
            "a: 1\r\n---\r\nb: |\r\n  ---\r\n---\r\nc: 3\r\n".to_owned(),
            format!("big: '{}'\n---\nsmall: 1\n---\n{}\n", "x".repeat(100), "y: 2\n".repeat(40)),
            "ünï: ✓\n---\nkey: ünïcödé ✓✓✓\n".to_owned(),
            "---\n---\n---\n".to_owned(),
        ];
        for text in &cases {
            let expected = whole(text);
            for window in [1, 2, 3, 7, 16, 1000] {
                let got = windowed(text, window).unwrap();
                // The whole stream's only difference: it has no piece for an empty stream end.
                assert_eq!(got, expected, "window {window}: {text:?}");
            }
        }
        assert_eq!(windowed("", 4).unwrap(), []);
    }

    #[test]
    fn a_directive_anywhere_means_the_stream_is_read_whole() {
        let text = format!("{}...\n%YAML 1.2\n---\nb: 2\n", "a: 1\n---\n".repeat(20));
        let mut windows = Windows::new(text.as_bytes(), 16);
        let mut directives = false;
        while let Some(w) = windows.next_window().unwrap() {
            directives |= matches!(w, Window::Directives);
            if directives {
                break;
            }
        }
        assert!(directives);
    }

    #[test]
    fn text_that_is_not_utf8_is_the_error_of_read_to_string() {
        let mut bytes = b"a: 1\n---\nb: ".to_vec();
        bytes.extend([0xff, b'\n']);
        let mut windows = Windows::new(&bytes[..], 4);
        let err = loop {
            match windows.next_window() {
                Ok(Some(_)) => {}
                Ok(None) => panic!("the stream is not UTF-8"),
                Err(e) => break e,
            }
        };
        let std_err = io::read_to_string(&bytes[..]).unwrap_err();
        assert_eq!(err.to_string(), std_err.to_string());
    }
}
