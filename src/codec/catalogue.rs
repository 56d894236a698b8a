//! Schema catalogue: writer schemas by wire id (from `schemas/catalogue.toml` or a Schema
//! Registry) and the reader schema of each record (the newest file in `schemas/`).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use apache_avro::Schema;
use serde::Deserialize;

/// The records the processor writes; their ids are what the encoder puts on the wire.
pub const OUTPUT_RECORDS: [&str; 3] = ["EscalationTask", "ContactNotification", "TaskEvent"];

/// The record of `care.incidents`, written apart from the engine's outputs.
pub const INCIDENT_RECORD: &str = "Incident";

/// The record of `care.visit-plans`.
pub const VISIT_PLAN_RECORD: &str = "VisitPlan";

#[derive(Debug, thiserror::Error)]
pub enum CatalogueError {
    #[error("{path}: {message}")]
    File { path: PathBuf, message: String },
    #[error("schema catalogue has {} problem(s):\n  {}", .0.len(), .0.join("\n  "))]
    Invalid(Vec<String>),
    #[error("schema registry: {0}")]
    Registry(String),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CatalogueFile {
    schema: Vec<CatalogueEntry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CatalogueEntry {
    id: u32,
    record: String,
    file: String,
}

/// A writer schema known by its wire id.
#[derive(Debug)]
pub struct WriterSchema {
    pub id: u32,
    /// Unqualified record name, e.g. `SensorEvent`.
    pub record: String,
    pub schema: Schema,
    /// True when this writer is byte-for-byte the reader schema: decoding needs no resolution.
    pub is_reader: bool,
    /// Set when the hot-path decoder reads this writer into the current reader exactly.
    pub(crate) fast: Option<super::fast::Layout>,
}

#[derive(Debug)]
pub struct Catalogue {
    /// By wire id, looked up for every record: the engine's fast hasher, not SipHash.
    writers: HashMap<u32, Arc<WriterSchema>, foldhash::fast::RandomState>,
    readers: HashMap<String, (Schema, String)>,
    current_ids: HashMap<String, u32>,
    dir: PathBuf,
}

fn record_name(schema: &Schema) -> Option<String> {
    match schema {
        Schema::Record(r) => Some(r.name.name.clone()),
        _ => None,
    }
}

fn read_schema(path: &Path) -> Result<(Schema, String), String> {
    let text = std::fs::read_to_string(path).map_err(|e| e.to_string())?;
    let schema = Schema::parse_str(&text).map_err(|e| format!("not a valid Avro schema: {e}"))?;
    Ok((schema, text))
}

impl Catalogue {
    /// Loads `dir/catalogue.toml` and every schema it names, reporting every problem found.
    pub fn load(dir: &Path) -> Result<Catalogue, CatalogueError> {
        // Bound what a corrupt length prefix can make the decoder allocate (default 512 MiB).
        // Kafka records are far smaller; the setter only takes effect the first time.
        let _ = apache_avro::util::max_allocation_bytes(16 * 1024 * 1024);

        let cat_path = dir.join("catalogue.toml");
        let text = std::fs::read_to_string(&cat_path).map_err(|e| CatalogueError::File {
            path: cat_path.clone(),
            message: e.to_string(),
        })?;
        let file: CatalogueFile = toml::from_str(&text).map_err(|e| CatalogueError::File {
            path: cat_path.clone(),
            message: e.to_string(),
        })?;

        let mut problems = Vec::new();
        let mut readers = HashMap::new();
        // The reader schemas are the top-level *.avsc files; history/ holds older writers.
        let mut entries: Vec<_> = std::fs::read_dir(dir)
            .map_err(|e| CatalogueError::File {
                path: dir.to_path_buf(),
                message: e.to_string(),
            })?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "avsc"))
            .collect();
        entries.sort();
        for path in entries {
            match read_schema(&path) {
                Ok((schema, text)) => match record_name(&schema) {
                    Some(name) => {
                        if readers.insert(name.clone(), (schema, text)).is_some() {
                            problems.push(format!(
                                "{}: a second top-level schema for record {name}",
                                path.display()
                            ));
                        }
                    }
                    None => problems.push(format!("{}: top level is not a record", path.display())),
                },
                Err(e) => problems.push(format!("{}: {e}", path.display())),
            }
        }

        let mut writers = HashMap::default();
        let mut current_ids = HashMap::new();
        for entry in &file.schema {
            let path = dir.join(&entry.file);
            let (schema, text) = match read_schema(&path) {
                Ok(s) => s,
                Err(e) => {
                    problems.push(format!("{} (id {}): {e}", path.display(), entry.id));
                    continue;
                }
            };
            if record_name(&schema).as_deref() != Some(entry.record.as_str()) {
                problems.push(format!(
                    "{}: id {} says record {} but the file defines {:?}",
                    cat_path.display(),
                    entry.id,
                    entry.record,
                    record_name(&schema)
                ));
                continue;
            }
            let is_reader = readers
                .get(&entry.record)
                .is_some_and(|(_, reader_text)| reader_text == &text);
            if is_reader {
                current_ids.insert(entry.record.clone(), entry.id);
            }
            let fast = super::fast::layout_of(&schema, readers.get(&entry.record).map(|r| &r.0));
            let writer = WriterSchema {
                id: entry.id,
                record: entry.record.clone(),
                schema,
                is_reader,
                fast,
            };
            if writers.insert(entry.id, Arc::new(writer)).is_some() {
                problems.push(format!(
                    "{}: id {} is used twice",
                    cat_path.display(),
                    entry.id
                ));
            }
        }
        let mut wanted: Vec<&str> = crate::model::InputKind::ALL
            .iter()
            .map(|k| k.record_name())
            .collect();
        wanted.extend(OUTPUT_RECORDS);
        wanted.push(INCIDENT_RECORD);
        wanted.push(VISIT_PLAN_RECORD);
        for record in wanted {
            if !readers.contains_key(record) {
                problems.push(format!(
                    "no schema in {} defines record {record}",
                    dir.display()
                ));
            } else if !current_ids.contains_key(record) {
                problems.push(format!(
                    "{}: no id is given to the current schema of {record}",
                    cat_path.display()
                ));
            }
        }
        if !problems.is_empty() {
            return Err(CatalogueError::Invalid(problems));
        }
        Ok(Catalogue {
            writers,
            readers: readers.into_iter().collect(),
            current_ids,
            dir: dir.to_path_buf(),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn writer(&self, id: u32) -> Option<&Arc<WriterSchema>> {
        self.writers.get(&id)
    }

    pub fn reader(&self, record: &str) -> Option<&Schema> {
        self.readers.get(record).map(|(s, _)| s)
    }

    pub fn reader_text(&self, record: &str) -> Option<&str> {
        self.readers.get(record).map(|(_, t)| t.as_str())
    }

    /// The id the encoder writes for the current schema of `record`.
    pub fn current_id(&self, record: &str) -> u32 {
        self.current_ids[record]
    }

    /// Adds a writer schema learned from a Schema Registry.
    pub fn insert_writer(&mut self, id: u32, schema_json: &str) -> Result<(), String> {
        let schema = Schema::parse_str(schema_json).map_err(|e| format!("schema {id}: {e}"))?;
        let record = record_name(&schema).ok_or_else(|| format!("schema {id}: not a record"))?;
        let is_reader = false;
        let fast = super::fast::layout_of(&schema, self.reader(&record));
        self.writers.insert(
            id,
            Arc::new(WriterSchema {
                id,
                record,
                schema,
                is_reader,
                fast,
            }),
        );
        Ok(())
    }

    /// Switches to a Schema Registry's numbering: the local catalogue's ids mean nothing
    /// there (a registry's id 3 may be another subject's schema), so every writer id is
    /// dropped; the current schemas are known under the ids the registry gave them and any
    /// other id is looked up in the registry when it is first seen.
    pub fn adopt_registry_ids(&mut self, ids: BTreeMap<String, u32>) {
        self.writers.clear();
        for (record, id) in &ids {
            if let Some((schema, _)) = self.readers.get(record) {
                let writer = WriterSchema {
                    id: *id,
                    record: record.clone(),
                    schema: schema.clone(),
                    is_reader: true,
                    fast: super::fast::layout_of(schema, Some(schema)),
                };
                self.writers.insert(*id, Arc::new(writer));
            }
        }
        self.current_ids = ids.into_iter().collect();
    }
}

/// A minimal Confluent Schema Registry client (the two calls the processor needs).
/// Blocking by design: call it from `spawn_blocking`, never on the hot path.
#[derive(Debug, Clone)]
pub struct RegistryClient {
    base: String,
    agent: ureq::Agent,
}

#[derive(Deserialize)]
struct SchemaById {
    schema: String,
}

#[derive(Deserialize)]
struct Registered {
    id: u32,
}

/// What a registry look-up can end in: a definite "no" or a fault worth retrying.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("schema id {0} is not registered")]
    NotFound(u32),
    #[error("{0}")]
    Unavailable(String),
}

impl RegistryClient {
    pub fn new(base: &str) -> RegistryClient {
        let agent = ureq::Agent::config_builder()
            .timeout_global(Some(std::time::Duration::from_secs(5)))
            .http_status_as_error(false)
            .build()
            .into();
        RegistryClient {
            base: base.trim_end_matches('/').to_string(),
            agent,
        }
    }

    /// `GET /schemas/ids/{id}`: the writer schema of a record on the wire.
    pub fn schema_by_id(&self, id: u32) -> Result<String, RegistryError> {
        let url = format!("{}/schemas/ids/{id}", self.base);
        let mut resp = self
            .agent
            .get(&url)
            .call()
            .map_err(|e| RegistryError::Unavailable(e.to_string()))?;
        match resp.status().as_u16() {
            200 => resp
                .body_mut()
                .read_json::<SchemaById>()
                .map(|b| b.schema)
                .map_err(|e| RegistryError::Unavailable(format!("bad answer: {e}"))),
            404 => Err(RegistryError::NotFound(id)),
            s => Err(RegistryError::Unavailable(format!("HTTP {s} for {url}"))),
        }
    }

    /// `POST /subjects/{subject}/versions`: registers (or finds) a schema, returning its id.
    pub fn register(&self, subject: &str, schema_json: &str) -> Result<u32, RegistryError> {
        let url = format!("{}/subjects/{subject}/versions", self.base);
        let body = serde_json::json!({ "schema": schema_json });
        let mut resp = self
            .agent
            .post(&url)
            .header("Content-Type", "application/vnd.schemaregistry.v1+json")
            .send_json(&body)
            .map_err(|e| RegistryError::Unavailable(e.to_string()))?;
        match resp.status().as_u16() {
            200 => resp
                .body_mut()
                .read_json::<Registered>()
                .map(|r| r.id)
                .map_err(|e| RegistryError::Unavailable(format!("bad answer: {e}"))),
            s => Err(RegistryError::Unavailable(format!("HTTP {s} for {url}"))),
        }
    }
}
