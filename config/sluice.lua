-- sluice's default config: Claude Code, Codex CLI, Gemini CLI and OpenAI SDKs
-- pointed at 127.0.0.1:7070 reach their own vendor with their own keys
-- (auth = passthrough), so it runs with no secrets in the environment.
-- See README.md "Config reference" for every field.
return {
  listen   = { "127.0.0.1:7070" },
  workers  = "auto",
  limits   = { max_body = 32 * 1024 * 1024, max_header = 64 * 1024, header_timeout = 10, keepalive_timeout = 60 },
  timeouts = { connect = 10, first_byte = 120, idle = 300, total = 3600 },
  history  = { path = "var/history.db", max = 1000 },
  log      = { access = "var/access.log", level = "info" },

  suppliers = {
    anthropic = { protocol = "anthropic", base_url = "https://api.anthropic.com", auth = { type = "passthrough" } },
    openai    = { protocol = "openai-chat", base_url = "https://api.openai.com/v1", auth = { type = "passthrough" },
                  models = { "gpt-4.1", "gpt-4.1-mini" } },
    responses = { protocol = "openai-responses", base_url = "https://api.openai.com/v1", auth = { type = "passthrough" } },
    gemini    = { protocol = "gemini", base_url = "https://generativelanguage.googleapis.com", auth = { type = "passthrough" } },
  },

  routes = {
    claude = { { match = "*", supplier = "anthropic" } },
    chat   = { { match = "*", supplier = "openai" } },
    codex  = { { match = "*", supplier = "responses" } },
    gemini = { { match = "*", supplier = "gemini" } },
  },
}
