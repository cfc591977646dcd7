-- sluice.clients — which client sent a request, from its User-Agent and
-- headers (DESIGN §8). The name goes into the access log, the history record
-- (`client`, filterable in /_sluice/requests) and the session-key rules.
--
-- Client-specific headers win over the User-Agent: Claude Code's
-- x-claude-code-session-id, and Codex's `originator` (codex_cli_rs,
-- codex_vscode...), which it sends whatever User-Agent a wrapper sets.

local M = {}

-- First match wins; patterns are matched against the lower-cased User-Agent.
M.RULES = {
    { "^claude%-cli", "claude-code" },
    { "claude%-code", "claude-code" },
    { "^codex", "codex" },
    { "geminicli", "gemini-cli" },
    { "gemini%-cli", "gemini-cli" },
    { "^anthropic/", "anthropic-sdk" },
    { "^openai/", "openai-sdk" },
    { "google%-genai", "google-genai-sdk" },
    { "^curl/", "curl" },
}

local function from_user_agent(raw)
    local ua = raw:lower()
    for _, rule in ipairs(M.RULES) do
        if ua:find(rule[1]) then return rule[2] end
    end
    if ua == "" then return "unknown" end
    return (ua:match("^([%w%._%-]+)") or "unknown"):sub(1, 40)
end

-- A client sends the same User-Agent on every request: its name is worked
-- out once (at most MEMO_MAX agents are remembered; then the memo starts over).
local MEMO_MAX = 512
local by_agent, n_agents = {}, 0

function M.identify(ctx)
    local h = ctx.headers
    if h["x-claude-code-session-id"] then return "claude-code" end
    local originator = h["originator"]
    if originator and originator:lower():find("^codex") then return "codex" end
    local raw = h["user-agent"] or ""
    local name = by_agent[raw]
    if name then return name end
    name = from_user_agent(raw)
    if n_agents == MEMO_MAX then by_agent, n_agents = {}, 0 end
    by_agent[raw], n_agents = name, n_agents + 1
    return name
end

return M
