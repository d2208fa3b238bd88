"""The config layer: YAML -> validated spec (parse), the checks that need files or model configs
(preflight), and the official VideoGrain configs (official). Only this layer names YAML fields."""
