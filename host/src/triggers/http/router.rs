//! Spin's HTTP route matching.
//!
//! A route is exact (`/hello`, `/users/:id`) or a trailing wildcard
//! (`/api/...`, which also matches `/api` itself). An exact match beats any
//! wildcard; among wildcards the longest prefix wins, whatever the order in
//! the manifest; a literal segment beats a `:param` at the same depth. Two
//! triggers with the same route text: the last one wins, as in Spin.

use std::fmt;
use std::sync::Arc;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(String),
    Param(String),
}

/// One route as written in the manifest, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    raw: Arc<str>,
    segments: Vec<Segment>,
    wildcard: bool,
    /// [`Route::rank`], made once: every request compares the routes it
    /// matches by it.
    rank: Box<[u8]>,
}

impl Route {
    pub fn parse(raw: &str) -> Route {
        let (body, wildcard) = match raw.strip_suffix("/...").or_else(|| raw.strip_suffix("/*")) {
            Some(prefix) => (prefix, true),
            None => (raw.strip_suffix('/').unwrap_or(raw), false),
        };
        let segments = body
            .split('/')
            .filter(|s| !s.is_empty())
            .map(|s| match s.strip_prefix(':') {
                Some(name) => Segment::Param(name.to_string()),
                None => Segment::Literal(s.to_string()),
            })
            .collect();
        let mut route = Route {
            raw: raw.into(),
            segments,
            wildcard,
            rank: Box::default(),
        };
        route.rank = route.rank();
        route
    }

    /// The route as written, e.g. `/api/...` (`spin-raw-component-route`).
    pub fn raw(&self) -> &Arc<str> {
        &self.raw
    }

    /// The route without its trailing wildcard (`spin-component-route`).
    pub fn without_wildcard(&self) -> &str {
        self.raw
            .strip_suffix("/...")
            .or_else(|| self.raw.strip_suffix("/*"))
            .unwrap_or(&*self.raw)
    }

    /// Matches `path`, returning the captured params and the path info.
    fn matches(&self, path: &str) -> Option<(Vec<(String, String)>, String)> {
        let trailing_slash = path.len() > 1 && path.ends_with('/');
        let parts: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
        if parts.len() < self.segments.len()
            || (!self.wildcard && parts.len() != self.segments.len())
        {
            return None;
        }
        let mut params = Vec::new();
        for (segment, part) in self.segments.iter().zip(&parts) {
            match segment {
                Segment::Literal(lit) if lit == part => {}
                Segment::Literal(_) => return None,
                Segment::Param(name) => params.push((name.clone(), part.to_string())),
            }
        }
        let rest = &parts[self.segments.len()..];
        let path_info = if !self.wildcard {
            String::new()
        } else if rest.is_empty() {
            if path.ends_with('/') {
                "/".into()
            } else {
                String::new()
            }
        } else {
            format!(
                "/{}{}",
                rest.join("/"),
                if trailing_slash { "/" } else { "" }
            )
        };
        Some((params, path_info))
    }

    /// Orders the routes that match one path the way Spin (through
    /// `routefinder`) does: segment by segment, a literal beats a parameter,
    /// which beats the wildcard; where one route ends, ending exactly beats
    /// going on with a wildcard. Compared lexicographically, this key says
    /// it: the higher key is the more specific route.
    fn rank(&self) -> Box<[u8]> {
        const WILDCARD: u8 = 1;
        const PARAM: u8 = 2;
        const LITERAL: u8 = 3;
        const EXACT_END: u8 = 4;
        let mut key: Vec<u8> = self
            .segments
            .iter()
            .map(|s| match s {
                Segment::Literal(_) => LITERAL,
                Segment::Param(_) => PARAM,
            })
            .collect();
        key.push(if self.wildcard { WILDCARD } else { EXACT_END });
        key.into()
    }
}

impl fmt::Display for Route {
    /// As Spin's banner shows it: `/api (wildcard)`, or the exact path.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let shown = self.without_wildcard().trim_end_matches('/');
        if self.wildcard {
            write!(f, "{shown} (wildcard)")
        } else {
            write!(f, "{shown}")
        }
    }
}

/// The result of routing one request.
#[derive(Debug, Clone)]
pub struct RouteMatch<'a> {
    pub component: &'a str,
    pub route: &'a Route,
    pub params: Vec<(String, String)>,
    pub path_info: String,
}

#[derive(Debug, Default)]
pub struct Router {
    routes: Vec<(Route, String)>,
    /// `(replaced component, route, winning component)` for the banner.
    duplicates: Vec<(String, String, String)>,
}

impl Router {
    pub fn new<'a>(routes: impl IntoIterator<Item = (&'a str, &'a str)>) -> Router {
        let mut router = Router::default();
        for (raw, component) in routes {
            let route = Route::parse(raw);
            match router.routes.iter_mut().find(|(r, _)| r.raw == route.raw) {
                Some(existing) => {
                    let replaced = std::mem::replace(&mut existing.1, component.to_string());
                    router
                        .duplicates
                        .push((replaced, raw.to_string(), component.to_string()));
                }
                None => router.routes.push((route, component.to_string())),
            }
        }
        router
    }

    pub fn route(&self, path: &str) -> Option<RouteMatch<'_>> {
        self.routes
            .iter()
            .filter_map(|(route, component)| {
                route.matches(path).map(|(params, path_info)| RouteMatch {
                    component,
                    route,
                    params,
                    path_info,
                })
            })
            .max_by_key(|m| &m.route.rank)
    }

    /// Routes in manifest order, for the banner.
    pub fn routes(&self) -> impl Iterator<Item = (&Route, &str)> {
        self.routes.iter().map(|(r, c)| (r, c.as_str()))
    }

    pub fn duplicates(&self) -> &[(String, String, String)] {
        &self.duplicates
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn router() -> Router {
        Router::new([
            ("/...", "catch-all"),
            ("/api/...", "api"),
            ("/api/users/...", "users"),
            ("/api/users/me", "me"),
            ("/api/users/:id", "user"),
            ("/hello", "hello"),
        ])
    }

    fn routed(path: &str) -> (String, String) {
        let router = router();
        let m = router.route(path).unwrap();
        (m.component.to_string(), m.path_info)
    }

    #[test]
    fn exact_beats_wildcard_and_longest_prefix_wins() {
        assert_eq!(routed("/hello"), ("hello".into(), "".into()));
        assert_eq!(routed("/api/users/me"), ("me".into(), "".into()));
        assert_eq!(
            routed("/api/users/7/orders"),
            ("users".into(), "/7/orders".into())
        );
        assert_eq!(routed("/api/products"), ("api".into(), "/products".into()));
        assert_eq!(
            routed("/elsewhere/deep/"),
            ("catch-all".into(), "/elsewhere/deep/".into())
        );
    }

    #[test]
    fn wildcard_matches_its_own_prefix_and_root() {
        assert_eq!(routed("/api"), ("api".into(), "".into()));
        assert_eq!(routed("/"), ("catch-all".into(), "/".into()));
    }

    #[test]
    fn params_are_captured_and_literals_win() {
        let r = router();
        let m = r.route("/api/users/42").unwrap();
        assert_eq!(m.component, "user");
        assert_eq!(m.params, vec![("id".to_string(), "42".to_string())]);
    }

    #[test]
    fn precedence_is_segment_by_segment() {
        // Same length, same number of literals: the earlier literal wins,
        // whichever order the manifest lists them in.
        for routes in [
            [("/a/:x/c", "param-first"), ("/a/b/:y", "literal-first")],
            [("/a/b/:y", "literal-first"), ("/a/:x/c", "param-first")],
        ] {
            let r = Router::new(routes);
            assert_eq!(r.route("/a/b/c").unwrap().component, "literal-first");
            assert_eq!(r.route("/a/z/c").unwrap().component, "param-first");
        }
        // A parameter beats a wildcard at the same place; an exact end
        // beats a wildcard that could go on.
        let r = Router::new([("/a/...", "wild"), ("/a/:x", "param"), ("/a/b/...", "b")]);
        assert_eq!(r.route("/a/z").unwrap().component, "param");
        assert_eq!(r.route("/a/b").unwrap().component, "b");
        assert_eq!(r.route("/a/z/y").unwrap().component, "wild");
        let r = Router::new([("/a/b/...", "wild"), ("/a/b", "exact")]);
        assert_eq!(r.route("/a/b").unwrap().component, "exact");
        assert_eq!(r.route("/a/b/c").unwrap().component, "wild");
    }

    #[test]
    fn no_match_without_catch_all() {
        let r = Router::new([("/hello", "hello")]);
        assert!(r.route("/hello/there").is_none());
        assert!(r.route("/").is_none());
    }

    #[test]
    fn duplicate_route_last_wins() {
        let r = Router::new([("/x", "first"), ("/x", "second")]);
        assert_eq!(r.route("/x").unwrap().component, "second");
        assert_eq!(
            r.duplicates(),
            [("first".into(), "/x".into(), "second".into())]
        );
    }

    #[test]
    fn banner_display() {
        assert_eq!(Route::parse("/...").to_string(), " (wildcard)");
        assert_eq!(Route::parse("/api/...").to_string(), "/api (wildcard)");
        assert_eq!(Route::parse("/hello").to_string(), "/hello");
        assert_eq!(Route::parse("/api/...").without_wildcard(), "/api");
    }
}
