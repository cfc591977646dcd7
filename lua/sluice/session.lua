-- sluice.session — which conversation a request belongs to (DESIGN §8).
--
-- Every turn of one conversation must map to the same key, and two
-- conversations to different keys, so the session store can keep a
-- conversation on one supplier and one upstream key (prompt caches keep
-- hitting). The key is the client's own session hint when it sends one, else
-- a hash of the parts of the conversation that do not change between turns.
-- First match wins:
--
--   1. the `x-claude-code-session-id` header (Claude Code)
--   2. Anthropic `metadata.user_id`, in both forms Claude Code has used:
--      "user_<hash>_account_<uuid>_session_<uuid>" and a JSON string with
--      "session_id"
--   3. Codex CLI's `session_id` / `conversation_id` headers
--   4. the body's `prompt_cache_key` (OpenAI)
--   5. OpenAI `user`, or `metadata.session_id` / `metadata.conversation_id`
--   6. the stable prefix: system prompt + first user message, after removing
--      volatile parts (Claude Code's "x-anthropic-billing-header: ..." system
--      block differs on every request)
--
-- The key is scoped by tenant (the inbound gateway key, hashed, or "anon"),
-- so one tenant's session id can never steer another tenant's binding, and
-- hashed (sluice.digest) before anything stores or shows it. Ops replace
-- rules 1-6 with `sessions.key = function(ctx) return key_or_nil end`.
--
--   S.hint(ctx, body, read?) -> raw key, rule name | nil
--   S.key(ctx, body, override?, read?) -> hashed scoped key, rule name | nil
--       body: the decoded request; or nil and read(ctx, part), which gives
--       the parts of the body a rule reads when a rule first needs them:
--       "hints" (S.HINT_FIELDS) for rules 2-5, "prefix" (S.PREFIX_FIELDS and
--       the first messages of S.BODY_LISTS) for rule 6. A request whose
--       client names its session in a header (Claude Code, Codex CLI) has
--       none of its conversation decoded.
--   S.tenant(ctx) -> tenant id (ctx.tenant, set by the inbound key check, or "anon")

local json = require("sluice.json")
local digest = require("sluice.digest")

local type, ipairs, concat = type, ipairs, table.concat

local S = {}

local BILLING = "^%s*x%-anthropic%-billing%-header:"

local function nonempty(v)
    return type(v) == "string" and v ~= "" and v or nil
end

-- Claude Code's metadata.user_id -> its session id.
function S.claude_user_session(user_id)
    if type(user_id) ~= "string" then return nil end
    local legacy = user_id:match("_session_([%w%-]+)$")
    if legacy then return legacy end
    if user_id:sub(1, 1) == "{" then
        local t = json.decode(user_id)
        if type(t) == "table" then return nonempty(t.session_id) end
    end
    return nil
end

-- The text of a message content in any protocol's shape: a string, a list
-- of blocks/parts with `text` (Anthropic, OpenAI, Responses, Gemini parts),
-- or a Gemini content ({ parts }). Other block kinds count by their type
-- only: a cache_control breakpoint that moves between turns must not
-- change the key.
local function text_of(c, out)
    if type(c) == "string" then
        if not c:find(BILLING) then out[#out + 1] = c end
    elseif type(c) == "table" then
        if c.parts then return text_of(c.parts, out) end
        if type(c.text) == "string" then
            if not c.text:find(BILLING) then out[#out + 1] = c.text end
        elseif c.content ~= nil then
            text_of(c.content, out)
        elseif #c == 0 and type(c.type) == "string" then
            out[#out + 1] = "<" .. c.type .. ">"
        end
        for _, part in ipairs(c) do text_of(part, out) end
    end
    return out
end

local SYSTEM_ROLES = { system = true, developer = true }

-- (nil, not false, for a message without one: Gemini allows that)
local function role_of(m)
    return m.role or (m.type == "message" and "user") or nil
end

-- The message the stable prefix ends with: the first user message.
function S.opens_conversation(m)
    if type(m) ~= "table" then return false end
    local role = role_of(m)
    if role == "user" then return true end
    return role == nil and m.parts and true or false
end

-- The body fields S.hint reads for rules 2-5, those of the stable prefix,
-- and the message lists it reads up to S.opens_conversation
-- (sluice.request_body decodes only these).
S.HINT_FIELDS = { "metadata", "prompt_cache_key", "user" }
S.PREFIX_FIELDS = { "system", "instructions", "systemInstruction", "system_instruction" }
S.BODY_LISTS = { "messages", "contents", "input" }

-- system prompt + first user message, in any protocol's body shape.
local function stable_prefix(body)
    local sys, first = {}, nil
    text_of(body.system, sys)                           -- anthropic
    text_of(body.instructions, sys)                     -- openai-responses
    text_of(body.systemInstruction or body.system_instruction, sys) -- gemini
    local list = body.messages or body.contents or body.input
    if type(list) == "string" then
        first = list
    elseif type(list) == "table" then
        for _, m in ipairs(list) do
            if S.opens_conversation(m) then
                first = concat(text_of(m.content ~= nil and m.content or m.parts, {}), "\n")
                break
            elseif type(m) == "table" and SYSTEM_ROLES[role_of(m)] then
                text_of(m.content, sys)
            end
        end
    end
    if not first or first == "" then return nil end
    return concat(sys, "\n") .. "\0" .. first
end

local function part(body, read, ctx, name)
    if body == nil and read then body = read(ctx, name) end
    return type(body) == "table" and body or {}
end

function S.hint(ctx, body, read)
    local h = ctx.headers or {}
    local v = nonempty(h["x-claude-code-session-id"])
    if v then return v, "claude-code-header" end
    local hints = part(body, read, ctx, "hints")
    local meta = type(hints.metadata) == "table" and hints.metadata or {}
    v = S.claude_user_session(meta.user_id)
    if v then return v, "metadata.user_id" end
    v = nonempty(h["session_id"]) or nonempty(h["conversation_id"])
    if v then return v, "codex-header" end
    v = nonempty(hints.prompt_cache_key)
    if v then return v, "prompt_cache_key" end
    v = nonempty(hints.user) or nonempty(meta.session_id) or nonempty(meta.conversation_id)
    if v then return v, "user" end
    v = stable_prefix(part(body, read, ctx, "prefix"))
    if v then return digest.hex(v, 64), "prefix" end
    return nil
end

-- The scope of a plain gateway key (a string in `keys`): the key, hashed.
-- Worked out once per config (config.lua's cfg.key_scopes), not per request.
function S.plain_key_scope(key)
    return "key:" .. digest.hex(key, 16)
end

function S.tenant(ctx)
    return ctx.tenant or "anon"
end

-- override: the config's sessions.key function (runs under the script budget
-- like on_request: the config's functions run interpreted).
function S.key(ctx, body, override, read)
    local raw, rule
    if override then
        raw = override(ctx)
        if raw ~= nil and type(raw) ~= "string" then
            error("sessions.key returned a " .. type(raw) .. " (expected a string or nil)", 0)
        end
        if raw == "" then raw = nil end
        rule = "sessions.key"
    else
        raw, rule = S.hint(ctx, body, read)
    end
    if not raw then return nil end
    return digest.hex(S.tenant(ctx) .. "\0" .. raw), rule
end

return S
