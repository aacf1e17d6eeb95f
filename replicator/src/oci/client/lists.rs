//! Tag lists and the catalog: paginated along `rel="next"` `Link`s and parsed as they stream.
//!
//! Invariants: a list is cut off at [`MAX_LIST_ENTRIES`], [`MAX_LIST_BYTES`] and
//! [`MAX_LIST_PAGES`] ([`RegistryError::ListTooLarge`]), so a hostile endless list stays bounded
//! in memory and time; a `Link` back to a page already read ends the list; a repository that does
//! not exist has no tags.
use std::collections::HashSet;

use reqwest::header::{HeaderMap, HeaderValue, ACCEPT};
use reqwest::{Method, StatusCode};
use url::Url;

use super::{header_str, parse_next_link, read_limited, redact, Body, RegistryClient};
use crate::oci::auth::Scope;
use crate::oci::error::{RegistryError, Result};

const PAGE_SIZE: usize = 1000;

/// Entries one tag list or catalog may hold across all its pages: far more than one repository or
/// catalog holds in practice, while a hostile endless list stays under ~100 MB of memory (the
/// names within [`MAX_LIST_BYTES`] plus a `String` each).
pub const MAX_LIST_ENTRIES: usize = 1_000_000;

/// Bytes of page bodies one tag list or catalog may take across all its pages: a million 60-byte
/// names with JSON quoting; more is a registry sending padding, not names.
pub const MAX_LIST_BYTES: u64 = 64 * 1024 * 1024;

/// Pages one tag list or catalog may take: room for [`MAX_LIST_ENTRIES`] even from a registry that
/// caps `n` at 100 entries a page, so only one answering near-empty pages forever meets it.
pub const MAX_LIST_PAGES: usize = 10_000;

impl RegistryClient {
    /// All tags of a repository (following `Link` pagination). A repository that does not exist has
    /// no tags.
    pub async fn list_tags(&self, repository: &str) -> Result<Vec<String>> {
        self.paginate(
            &format!("v2/{repository}/tags/list?n={PAGE_SIZE}"),
            &Scope::pull(repository),
            List::Tags(repository),
        )
        .await
    }

    /// All repositories (`/v2/_catalog` with pagination); on a `type: harbor` registry, those of
    /// every project the credential sees, through Harbor's API (Harbor answers `_catalog` to
    /// system administrators only, never to a robot account).
    pub async fn catalog(&self) -> Result<Vec<String>> {
        if self.is_harbor() {
            return self.harbor_repositories().await;
        }
        self.paginate(
            &format!("v2/_catalog?n={PAGE_SIZE}"),
            &Scope::catalog(),
            List::Catalog,
        )
        .await
    }

    /// The entries of a paginated list, page after page along `rel="next"` `Link`s, within
    /// [`MAX_LIST_PAGES`], [`MAX_LIST_BYTES`] and [`MAX_LIST_ENTRIES`]. A `Link` back to a page
    /// already read ends the list: every page of that cycle has been read. Harbor's listings
    /// refuse a `Link` to another origin ([`RegistryError::Refused`]): Harbor's own are paths.
    pub(super) async fn paginate(
        &self,
        first: &str,
        scope: &Scope,
        list: List<'_>,
    ) -> Result<Vec<String>> {
        let mut url = self.url(first)?;
        let mut seen = HashSet::new();
        let mut entries = Vec::new();
        let mut bytes_left = MAX_LIST_BYTES;
        let too_large = |url: &Url, limit: String| RegistryError::ListTooLarge {
            registry: self.name.clone(),
            list: list.to_string(),
            url: redact(url),
            limit,
        };
        loop {
            if seen.len() >= MAX_LIST_PAGES {
                return Err(too_large(&url, format!("{MAX_LIST_PAGES} pages")));
            }
            seen.insert(url.clone());
            let resp = self
                .send(Method::GET, url.clone(), scope, list.headers(), Body::Empty)
                .await?;
            // A repository that does not exist has no tags (its first page is a 404).
            let first_tags_page = matches!(list, List::Tags(_)) && seen.len() == 1;
            if resp.status() == StatusCode::NOT_FOUND && first_tags_page {
                return Ok(entries);
            }
            if !resp.status().is_success() {
                return Err(self.status_error(&Method::GET, &url, resp).await);
            }
            let next = header_str(resp.headers(), "link").and_then(|l| parse_next_link(&l));
            let body = read_limited(resp, bytes_left)
                .await
                .map_err(|e| self.transport(&url, e))?;
            bytes_left = bytes_left
                .checked_sub(body.len() as u64)
                .ok_or_else(|| too_large(&url, format!("{MAX_LIST_BYTES} bytes")))?;
            let parsed = list.parse_page(&body, &mut entries);
            if entries.len() > MAX_LIST_ENTRIES {
                return Err(too_large(&url, format!("{MAX_LIST_ENTRIES} entries")));
            }
            if let Err(e) = parsed {
                return Err(self.invalid(&url, format!("{list} is not valid JSON: {e}")));
            }
            let Some(next) = next else {
                return Ok(entries);
            };
            let from = url;
            url = self.follow(&from, "a pagination Link", &next)?;
            if list.is_harbor() && !self.is_own_origin(&url) {
                return Err(RegistryError::Refused {
                    registry: self.name.clone(),
                    url: redact(&from),
                    what: "a pagination Link",
                    reason: format!(
                        "{} is on another origin; Harbor's own pagination links are paths on the registry",
                        redact(&url)
                    ),
                });
            }
            if seen.contains(&url) {
                tracing::warn!(registry = %self.name, url = %redact(&url), "{list} pagination links back to a page already read; the list ends there");
                return Ok(entries);
            }
        }
    }
}

/// A paginated list: what errors call it and how its pages read.
#[derive(Clone, Copy)]
pub(super) enum List<'a> {
    Catalog,
    Tags(&'a str),
    /// Harbor's `/api/v2.0/projects`: an array of projects, each with its `name`.
    HarborProjects,
    /// Harbor's `/api/v2.0/projects/<project>/repositories`: an array of repositories, each with
    /// its `name` (`project/repo`).
    HarborRepositories(&'a str),
}

impl List<'_> {
    fn is_harbor(self) -> bool {
        matches!(self, List::HarborProjects | List::HarborRepositories(_))
    }

    /// Headers of every page request.
    fn headers(self) -> HeaderMap {
        let mut headers = HeaderMap::new();
        if let List::HarborRepositories(_) = self {
            // A project named with digits only would otherwise be read as a project id.
            headers.insert("x-is-resource-name", HeaderValue::from_static("true"));
        }
        if self.is_harbor() {
            headers.insert(ACCEPT, HeaderValue::from_static("application/json"));
        }
        headers
    }

    /// Appends a page's entries to `entries`, parsed as they stream (see [`ListPage`]).
    fn parse_page(self, body: &[u8], entries: &mut Vec<String>) -> serde_json::Result<()> {
        let mut de = serde_json::Deserializer::from_slice(body);
        match self {
            List::Catalog | List::Tags(_) => serde::de::DeserializeSeed::deserialize(
                ListPage {
                    field: if let List::Catalog = self {
                        "repositories"
                    } else {
                        "tags"
                    },
                    entries,
                },
                &mut de,
            ),
            List::HarborProjects | List::HarborRepositories(_) => {
                serde::de::DeserializeSeed::deserialize(NamedEntries(entries), &mut de)
            }
        }
    }
}

impl std::fmt::Display for List<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            List::Catalog => f.write_str("the catalog"),
            List::Tags(repository) => write!(f, "the tag list of {repository}"),
            List::HarborProjects => f.write_str("Harbor's project list"),
            List::HarborRepositories(project) => {
                write!(f, "Harbor's repository list of project {project}")
            }
        }
    }
}

/// The entries of one page of a Harbor listing: a JSON array of objects, the `name` of each
/// appended to the entries as it is parsed (other fields skipped), stopping one past
/// [`MAX_LIST_ENTRIES`].
struct NamedEntries<'a>(&'a mut Vec<String>);

impl<'de> serde::de::DeserializeSeed<'de> for NamedEntries<'_> {
    type Value = ();

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> std::result::Result<(), D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> serde::de::Visitor<'de> for NamedEntries<'_> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("an array of objects with a \"name\"")
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(
        self,
        mut seq: A,
    ) -> std::result::Result<(), A::Error> {
        #[derive(serde::Deserialize)]
        struct Named {
            name: String,
        }
        while let Some(Named { name }) = seq.next_element::<Named>()? {
            self.0.push(name);
            if self.0.len() > MAX_LIST_ENTRIES {
                return Err(serde::de::Error::custom("too many entries"));
            }
        }
        Ok(())
    }
}

/// One list page (`{"<field>": ["a", …], …}`, the field absent or `null` when empty), its entries
/// appended to `entries` as they are parsed, stopping one past [`MAX_LIST_ENTRIES`]: a page of
/// millions of empty strings never becomes millions of `String`s.
struct ListPage<'a> {
    field: &'static str,
    entries: &'a mut Vec<String>,
}

impl<'de> serde::de::DeserializeSeed<'de> for ListPage<'_> {
    type Value = ();

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> std::result::Result<(), D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> serde::de::Visitor<'de> for ListPage<'_> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "an object with a {:?} list", self.field)
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(
        self,
        mut map: A,
    ) -> std::result::Result<(), A::Error> {
        while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            if key == self.field {
                map.next_value_seed(ListEntries(&mut *self.entries))?;
            } else {
                map.next_value::<serde::de::IgnoredAny>()?;
            }
        }
        Ok(())
    }
}

/// The entries of a [`ListPage`]: an array of strings, or `null`.
struct ListEntries<'a>(&'a mut Vec<String>);

impl<'de> serde::de::DeserializeSeed<'de> for ListEntries<'_> {
    type Value = ();

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> std::result::Result<(), D::Error> {
        d.deserialize_option(self)
    }
}

impl<'de> serde::de::Visitor<'de> for ListEntries<'_> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a list of names")
    }

    fn visit_none<E: serde::de::Error>(self) -> std::result::Result<(), E> {
        Ok(())
    }

    fn visit_unit<E: serde::de::Error>(self) -> std::result::Result<(), E> {
        Ok(())
    }

    fn visit_some<D: serde::Deserializer<'de>>(self, d: D) -> std::result::Result<(), D::Error> {
        d.deserialize_seq(self)
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(
        self,
        mut seq: A,
    ) -> std::result::Result<(), A::Error> {
        while let Some(entry) = seq.next_element::<String>()? {
            self.0.push(entry);
            if self.0.len() > MAX_LIST_ENTRIES {
                return Err(serde::de::Error::custom("too many entries"));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_harbor_page_is_an_array_of_named_objects_and_nothing_else() {
        let mut names = Vec::new();
        List::HarborProjects
            .parse_page(
                br#"[{"project_id": 1, "name": "team", "metadata": {"public": "false"}}, {"name": "ops"}]"#,
                &mut names,
            )
            .unwrap();
        assert_eq!(names, ["team", "ops"]);
        for hostile in [
            &b"<html>502 Bad Gateway</html>"[..],
            br#"{"errors": [{"code": "UNAUTHORIZED"}]}"#,
            br#"[{"id": 1}]"#,
            br#"[{"name": 7}]"#,
            br#"["team"]"#,
            b"",
        ] {
            let mut names = Vec::new();
            assert!(
                List::HarborRepositories("team")
                    .parse_page(hostile, &mut names)
                    .is_err(),
                "{}",
                String::from_utf8_lossy(hostile)
            );
        }
    }

    #[test]
    fn only_harbor_lists_name_their_project_by_name_and_ask_for_json() {
        let headers = List::HarborRepositories("123").headers();
        assert_eq!(
            headers.get("x-is-resource-name").map(|v| v.as_bytes()),
            Some(&b"true"[..])
        );
        assert!(List::Catalog.headers().is_empty());
        assert_eq!(List::HarborProjects.to_string(), "Harbor's project list");
    }
}
