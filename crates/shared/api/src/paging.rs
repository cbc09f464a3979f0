//! Cursor pagination, one shape for every list of the API: `?limit=` (1 to
//! 100, default 20) and `?cursor=` (the `next_cursor` of the page before)
//! ask; `{"items": [...], "next_cursor": "..." | null}` answers. A cursor
//! names the last item of a page, so pages stay put while items are added.

use crate::{Problem, query_param};
use serde::Serialize;

pub const DEFAULT_PAGE: u32 = 20;
pub const MAX_PAGE: u32 = 100;

/// What a client asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageRequest {
    pub limit: u32,
    /// After which item the page starts; `None` for the first page.
    pub cursor: Option<String>,
}

impl PageRequest {
    /// From the query string; `valid_cursor` says whether a cursor is one
    /// this list gives (anything else is a 400, not a silent restart).
    pub fn from_query(
        query: Option<&str>,
        valid_cursor: impl Fn(&str) -> bool,
    ) -> Result<PageRequest, Problem> {
        let limit = match query_param(query, "limit") {
            None => DEFAULT_PAGE,
            Some(text) => text
                .parse::<u32>()
                .ok()
                .filter(|n| (1..=MAX_PAGE).contains(n))
                .ok_or_else(|| {
                    Problem::bad_request(format!(
                        "`limit` must be a whole number from 1 to {MAX_PAGE}"
                    ))
                })?,
        };
        let cursor = query_param(query, "cursor");
        if let Some(cursor) = &cursor
            && !valid_cursor(cursor)
        {
            return Err(Problem::bad_request(format!(
                "`cursor` {cursor:?} is not one a page of this list gave (its `next_cursor`)"
            )));
        }
        Ok(PageRequest { limit, cursor })
    }

    /// How many items to fetch: one more than a page, which tells whether
    /// another page follows.
    pub fn fetch(&self) -> u32 {
        self.limit + 1
    }

    /// The page of `items` (fetched with [`PageRequest::fetch`], in list
    /// order): at most `limit` of them, and the cursor of the last one if
    /// more follow.
    pub fn page<T>(&self, mut items: Vec<T>, cursor_of: impl Fn(&T) -> String) -> Page<T> {
        let next_cursor = if items.len() > self.limit as usize {
            items.truncate(self.limit as usize);
            items.last().map(cursor_of)
        } else {
            None
        };
        Page { items, next_cursor }
    }
}

/// Whether `text` is an id as this API writes them: a UUID in its
/// canonical form (lowercase, hyphenated), the only form that sorts as the
/// ids it names. Cursors of id-ordered lists must be one.
pub fn is_id(text: &str) -> bool {
    text.len() == 36
        && text.char_indices().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => c == '-',
            _ => c.is_ascii_digit() || ('a'..='f').contains(&c),
        })
}

/// Whether `text` is a position in a list numbered from 1 (`seq`), or 0:
/// before the first.
pub fn is_position(text: &str) -> bool {
    text.parse::<i64>().is_ok_and(|n| n >= 0)
}

/// One page of a list, as the API answers it.
#[derive(Debug, Serialize)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub next_cursor: Option<String>,
}

impl Page<String> {
    /// The page as JSON text, when each item is JSON text already (stored
    /// views are served as stored, not decoded and encoded again).
    pub fn to_json_text(&self) -> String {
        let mut text = String::from("{\"items\":[");
        text.push_str(&self.items.join(","));
        text.push_str("],\"next_cursor\":");
        text.push_str(&serde_json::to_string(&self.next_cursor).unwrap_or_else(|_| "null".into()));
        text.push('}');
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(query: &str) -> Result<PageRequest, Problem> {
        PageRequest::from_query(Some(query), |c| c.starts_with('c'))
    }

    #[test]
    fn limits_and_cursors_are_checked() {
        assert_eq!(request("").unwrap().limit, DEFAULT_PAGE);
        assert_eq!(request("limit=100").unwrap().limit, 100);
        for bad in [
            "limit=0",
            "limit=101",
            "limit=x",
            "limit=-1",
            "limit=NaN",
            "cursor=zzz",
        ] {
            assert_eq!(request(bad).unwrap_err().status, 400, "{bad}");
        }
        assert_eq!(request("cursor=c7").unwrap().cursor.as_deref(), Some("c7"));
    }

    #[test]
    fn cursors_are_canonical() {
        assert!(is_id("0192f0c2-1b2c-7d3e-8f40-a1b2c3d4e5f6"));
        for bad in [
            "0192F0C2-1B2C-7D3E-8F40-A1B2C3D4E5F6",
            "0192f0c21b2c7d3e8f40a1b2c3d4e5f6",
            "{0192f0c2-1b2c-7d3e-8f40-a1b2c3d4e5f6}",
            "urn:uuid:0192f0c2-1b2c-7d3e-8f40-a1b2c3d4e5f6",
            "0192f0c2-1b2c-7d3e-8f40-a1b2c3d4e5fg",
            "",
        ] {
            assert!(!is_id(bad), "{bad}");
        }
        assert!(is_position("7") && is_position("0"));
        assert!(!is_position("-1") && !is_position("99999999999999999999") && !is_position("x"));
    }

    #[test]
    fn a_page_names_its_last_item_only_when_more_follow() {
        let ask = request("limit=2").unwrap();
        assert_eq!(ask.fetch(), 3);
        let full = ask.page(vec![1, 2, 3], |n| format!("c{n}"));
        assert_eq!(
            (full.items, full.next_cursor.as_deref()),
            (vec![1, 2], Some("c2"))
        );
        let last = ask.page(vec![1, 2], |n| format!("c{n}"));
        assert_eq!((last.items, last.next_cursor), (vec![1, 2], None));
        let text = Page {
            items: vec!["{\"a\":1}".to_string()],
            next_cursor: Some("c\"1".into()),
        };
        assert_eq!(
            text.to_json_text(),
            r#"{"items":[{"a":1}],"next_cursor":"c\"1"}"#
        );
    }
}
