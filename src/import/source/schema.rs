//! dhamps-vdb's two schemas as this import knows them: tern's `db_version` 3 (before the
//! LLM-service refactor) and 4, and the tables and columns each must have (from dhamps-vdb's
//! migrations 001 to 004).

/// The schema versions this import reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SchemaVersion {
    /// Before the refactor: `llm_services` with a plaintext `api_key`, `users_llm_services`
    /// (ownership and shares, roles owner/writer/reader), `projects_llm_services`.
    V3,
    /// The current one: `definitions`, `instances` with `api_key_encrypted`, `instances_shared_with`
    /// (roles owner/editor/reader), `projects.instance_id`.
    V4,
}

impl SchemaVersion {
    pub fn number(self) -> i32 {
        match self {
            Self::V3 => 3,
            Self::V4 => 4,
        }
    }

    /// The tables and columns the import reads, which the source must have.
    pub(super) fn required_columns(self) -> &'static [(&'static str, &'static [&'static str])] {
        const COMMON_PROJECTS: &[&str] = &[
            "project_id",
            "project_handle",
            "owner",
            "description",
            "metadata_scheme",
            "public_read",
            "created_at",
            "updated_at",
        ];
        const STANDARDS: &[&str] = &[
            "api_standard_handle",
            "description",
            "key_method",
            "key_field",
            "created_at",
            "updated_at",
        ];
        const MEMBERS: &[&str] = &["user_handle", "project_id", "role"];
        match self {
            Self::V3 => &[
                (
                    "users",
                    &[
                        "user_handle",
                        "name",
                        "email",
                        "vdb_api_key",
                        "created_at",
                        "updated_at",
                    ],
                ),
                ("api_standards", STANDARDS),
                (
                    "llm_services",
                    &[
                        "llm_service_id",
                        "llm_service_handle",
                        "owner",
                        "endpoint",
                        "description",
                        "api_key",
                        "api_standard",
                        "model",
                        "dimensions",
                        "created_at",
                        "updated_at",
                    ],
                ),
                (
                    "users_llm_services",
                    &[
                        "user_handle",
                        "llm_service_id",
                        "role",
                        "created_at",
                        "updated_at",
                    ],
                ),
                ("projects", COMMON_PROJECTS),
                (
                    "projects_llm_services",
                    &["project_id", "llm_service_id", "created_at"],
                ),
                ("users_projects", MEMBERS),
            ],
            Self::V4 => &[
                (
                    "users",
                    &[
                        "user_handle",
                        "name",
                        "email",
                        "vdb_key",
                        "created_at",
                        "updated_at",
                    ],
                ),
                ("api_standards", STANDARDS),
                (
                    "definitions",
                    &[
                        "definition_id",
                        "definition_handle",
                        "owner",
                        "endpoint",
                        "description",
                        "api_standard",
                        "model",
                        "dimensions",
                        "context_limit",
                        "is_public",
                        "created_at",
                        "updated_at",
                    ],
                ),
                ("definitions_shared_with", &["user_handle", "definition_id"]),
                (
                    "instances",
                    &[
                        "instance_id",
                        "instance_handle",
                        "owner",
                        "endpoint",
                        "description",
                        "api_standard",
                        "model",
                        "dimensions",
                        "context_limit",
                        "definition_id",
                        "api_key_encrypted",
                        "created_at",
                        "updated_at",
                    ],
                ),
                (
                    "instances_shared_with",
                    &[
                        "user_handle",
                        "instance_id",
                        "role",
                        "created_at",
                        "updated_at",
                    ],
                ),
                (
                    "projects",
                    &[
                        "project_id",
                        "project_handle",
                        "owner",
                        "description",
                        "metadata_scheme",
                        "public_read",
                        "instance_id",
                        "created_at",
                        "updated_at",
                    ],
                ),
                ("users_projects", MEMBERS),
            ],
        }
    }
}
