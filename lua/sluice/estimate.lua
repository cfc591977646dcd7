-- sluice.estimate — a local token estimate for count_tokens.
--
-- /v1/messages/count_tokens exists only on Anthropic. When the route's
-- supplier speaks another protocol, sluice answers it locally with an
-- estimate instead of failing: about four characters per token over all
-- text (system, messages, tool arguments and results, tool names,
-- descriptions and schemas), a fixed cost per image and per document, and a
-- small overhead per message and tool. The answer has Anthropic's shape,
-- {"input_tokens": N}, and is marked as an estimate by the response header
-- `x-sluice-token-estimate: chars/4` (the body stays exactly the documented
-- shape so strict clients parse it).

local json = require("sluice.json")

local type, ipairs, tostring, ceil = type, ipairs, tostring, math.ceil

local M = {}

M.IMAGE_TOKENS = 1600      -- Anthropic's cap for one image (~1.15 megapixels)
M.DOCUMENT_TOKENS = 3000   -- a few PDF pages
M.MESSAGE_TOKENS = 4       -- role and framing per message
M.TOOL_TOKENS = 16         -- per tool definition, on top of its text
M.HEADER = "x-sluice-token-estimate"
M.HEADER_VALUE = "chars/4"

local function part_cost(p)
    local t = p.type
    if t == "text" or t == "thinking" then
        return #(p.text or ""), 0
    elseif t == "image" then
        return 0, M.IMAGE_TOKENS
    elseif t == "document" then
        local s = p.source or {}
        if s.kind == "text" then return #(s.data or ""), 0 end
        return 0, M.DOCUMENT_TOKENS
    elseif t == "tool_call" then
        local args = type(p.arguments) == "table" and json.encode(p.arguments) or tostring(p.arguments or "")
        return #(p.name or "") + #(args or ""), 0
    elseif t == "tool_result" then
        local chars, fixed = 0, 0
        for _, c in ipairs(p.content or {}) do
            local a, b = part_cost(c)
            chars, fixed = chars + a, fixed + b
        end
        return chars, fixed
    end
    return 0, 0
end

-- IR request -> estimated input tokens.
function M.count_tokens(req)
    local chars, fixed = 0, 0
    local function add(a, b) chars, fixed = chars + a, fixed + b end
    for _, p in ipairs(req.system or {}) do add(part_cost(p)) end
    for _, m in ipairs(req.messages or {}) do
        fixed = fixed + M.MESSAGE_TOKENS
        for _, p in ipairs(m.content or {}) do add(part_cost(p)) end
    end
    for _, t in ipairs(req.tools or {}) do
        fixed = fixed + M.TOOL_TOKENS
        chars = chars + #(t.name or "") + #(t.description or "")
        if type(t.parameters) == "table" then chars = chars + #(json.encode(t.parameters) or "") end
    end
    return ceil(chars / 4) + fixed
end

-- A count_tokens request body (decoded) in the client's protocol, whose
-- codec reads it and shapes a refusal (Anthropic: the only protocol with
-- a count_tokens endpoint) -> status, body, headers.
function M.count_tokens_response(codec, body)
    local req, err = codec.decode_request(body)
    if not req then
        local status, eb = codec.encode_error({ status = 400, type = "invalid_request", message = err })
        return status, eb, {}
    end
    return 200, { input_tokens = M.count_tokens(req) }, { [M.HEADER] = M.HEADER_VALUE }
end

return M
