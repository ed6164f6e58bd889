-- Seed data, so that a new database is usable at once. Standards first: definitions reference them.

INSERT INTO api_standards (handle, description, auth_header, auth_scheme) VALUES
    ('openai', 'OpenAI-compatible API: bearer key in the Authorization header', 'Authorization', 'Bearer'),
    ('cohere', 'Cohere API: bearer key in the Authorization header', 'Authorization', 'Bearer'),
    ('gemini', 'Google Gemini API: key in the x-goog-api-key header', 'x-goog-api-key', '');

INSERT INTO definitions (owner_id, handle, api_standard_id, endpoint, model, dimensions, context_limit)
SELECT u.id, d.handle, s.id, d.endpoint, d.model, d.dimensions, d.context_limit
FROM (VALUES
    ('openai-large', 'openai', 'https://api.openai.com/v1/embeddings', 'text-embedding-3-large', 3072, 8192),
    ('openai-small', 'openai', 'https://api.openai.com/v1/embeddings', 'text-embedding-3-small', 1536, 8191),
    ('cohere-multilingual-v3', 'cohere', 'https://api.cohere.com/v2/embed', 'embed-multilingual-v3.0', 1024, 512),
    ('cohere-v4', 'cohere', 'https://api.cohere.com/v2/embed', 'embed-v4.0', 1536, 128000),
    ('gemini-embedding-001', 'gemini', 'https://generativelanguage.googleapis.com/v1beta/models/gemini-embedding-001:embedContent', 'gemini-embedding-001', 3072, 2048)
) AS d (handle, standard, endpoint, model, dimensions, context_limit)
JOIN api_standards s ON s.handle = d.standard
JOIN users u ON u.handle = '_system';
