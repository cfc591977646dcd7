-- Specs for sluice.json (core/json.c), the lossless JSON codec: what a
-- gateway forwarding tool schemas and coding-agent bodies relies on. Empty
-- arrays, null and big integers survive; strings are strict UTF-8; encode
-- never emits invalid JSON. lua-cjson serves as a differential oracle on
-- documents it handles, Python's json module (via the golden fixtures) for
-- canonical output, and a seeded property test covers random values.
local json = require("sluice.json")
local cjson = require("cjson")

local FIXTURES = "spec/fixtures/json/"

local function read_file(name)
  local f = assert(io.open(FIXTURES .. name, "rb"))
  local s = f:read("*a")
  f:close()
  return s
end

local function roundtrip(s)
  local v, err = json.decode(s)
  assert(v ~= nil, err)
  return assert(json.encode(v))
end

-- Deep equality that also requires the same JSON kind: array vs object,
-- boxed numbers by their text.
local function same(a, b, path)
  path = path or "$"
  if type(a) ~= type(b) then
    return false, path .. ": " .. type(a) .. " vs " .. type(b)
  end
  if type(a) ~= "table" then
    if a == b then return true end
    return false, path .. ": " .. tostring(a) .. " vs " .. tostring(b)
  end
  if getmetatable(a) ~= getmetatable(b) then
    return false, path .. ": different kind (array/object/number)"
  end
  if getmetatable(a) == json.number_mt then
    return a[1] == b[1], path .. ": " .. tostring(a[1]) .. " vs " .. tostring(b[1])
  end
  for k, v in pairs(a) do
    local ok, where = same(v, b[k], path .. "." .. tostring(k))
    if not ok then return false, where end
  end
  for k in pairs(b) do
    if a[k] == nil then return false, path .. "." .. tostring(k) .. ": missing" end
  end
  return true
end

local function assert_same(a, b)
  local ok, where = same(a, b)
  assert(ok, where)
end

-- json.members checks a document as decode does: the same error for each.
local function assert_decode_error(doc, fragment)
  local v, err = json.decode(doc)
  assert(v == nil, ("decoded %q"):format(doc))
  assert(type(err) == "string" and err:find(fragment, 1, true),
    ("%q: error %q lacks %q"):format(doc, tostring(err), fragment))
  local spans, merr = json.members(doc)
  assert(spans == nil and merr == err, ("%q: members said %q, decode %q"):format(doc, tostring(merr), err))
end

describe("sluice.json", function()
  describe("round trips what cjson loses", function()
    it("keeps empty arrays and objects apart", function()
      assert.are.equal('{"required":[]}', roundtrip('{"required":[]}'))
      assert.are.equal('{"a":[[],{}],"b":[{}],"c":{}}', roundtrip('{"a":[[],{}],"b":[{}],"c":{}}'))
      assert.are.equal("[]", roundtrip("[]"))
      assert.are.equal("{}", roundtrip("{}"))
    end)

    it("marks decoded arrays and leaves objects plain", function()
      local v = json.decode('{"list":[1,2],"empty":[],"obj":{}}')
      assert.is_nil(getmetatable(v))
      assert.is_nil(getmetatable(v.obj))
      assert.are.equal(json.array_mt, getmetatable(v.list))
      assert.is_true(json.is_array(v.empty))
      assert.are.equal(0, #v.empty)
    end)

    it("round-trips null, the same value as cjson.null", function()
      assert.are.equal(json.null, cjson.null)
      assert.are.equal(json.null, json.decode("null"))
      local v = json.decode('{"a":null,"b":[null,1,null]}')
      assert.are.equal(json.null, v.a)
      assert.are.equal(3, #v.b)
      assert.are.equal('{"a":null,"b":[null,1,null]}', json.encode(v))
    end)

    it("keeps integers up to 2^53 as exact numbers", function()
      assert.are.equal(9007199254740992, json.decode("9007199254740992"))
      assert.are.equal(2 ^ 53, json.decode("9007199254740992"))
      assert.are.equal(-(2 ^ 53), json.decode("-9007199254740992"))
      assert.are.equal("9007199254740992", json.encode(2 ^ 53))
      assert.are.equal("[9007199254740992,-9007199254740992]",
        roundtrip("[9007199254740992,-9007199254740992]"))
    end)

    it("boxes larger integer literals and writes them back verbatim", function()
      for _, text in ipairs({ "9007199254740993", "12345678901234567890", "-9007199254740993",
        "-12345678901234567890123456789", "100000000000000000000000000000000000000000" }) do
        local v = json.decode(text)
        assert.are.equal("table", type(v))
        assert.are.equal(json.number_mt, getmetatable(v))
        assert.are.equal(text, v[1])
        assert.are.equal(text, tostring(v))
        assert.are.equal(text, json.encode(v))
        assert.are.equal('{"id":' .. text .. '}', roundtrip('{"id":' .. text .. '}'))
      end
    end)

    it("round-trips floats exactly", function()
      for _, x in ipairs({ 0.1, 1e300, -2.5e-7, 1 / 3, 123.456, 5e-324, 2.2250738585072014e-308,
        1.7976931348623157e308, 0.30000000000000004, -1e-300, 2 ^ 60, 1e21,
        12345678901234568, -2 ^ 53 - 2, 2 ^ 63 }) do
        local s = assert(json.encode(x))
        assert.are.equal(x, json.decode(s))
        assert.is_nil(s:find("[^%d%.eE+-]"), s)
      end
      assert.are.equal("0.1", json.encode(0.1))
      assert.are.equal("[0.1,1e+300,-2.5e-07]", roundtrip("[0.1,1e300,-2.5e-7]"))
    end)

    it("prints integral numbers without a fraction, -0 as -0", function()
      assert.are.equal("3", json.encode(3))
      assert.are.equal("-42", json.encode(-42))
      assert.are.equal("0", json.encode(0))
      assert.are.equal("-0", json.encode(-0.0))
      assert.are.equal("1e+16", json.encode(1e16))
      assert.are.equal("2.5", json.encode(2.5))
      assert.are.equal("[1,2.5]", roundtrip("[1.0, 2.50]"))
    end)

    it("writes numbers with up to three decimals as printf's shortest form would", function()
      -- (they take a fast path: a session's times in milliseconds, prices)
      for _, x in ipairs({ 1764786000.123, 1764786000.1, 0.5, -0.25, 0.001, -0.001, 12.34,
                           999999999999.999, 1e12 + 0.5, 0.1 + 0.2, 1 / 3, 1764786000.1235 }) do
        local s = assert(json.encode(x))
        local want = string.format("%.15g", x)
        if tonumber(want) ~= x then want = string.format("%.16g", x) end
        if tonumber(want) ~= x then want = string.format("%.17g", x) end
        assert.are.equal(want, s)
        assert.are.equal(x, json.decode(s))
      end
      math.randomseed(99)
      for _ = 1, 20000 do
        local x = math.random(-10 ^ 12, 10 ^ 12) / 1000
        local s = assert(json.encode(x))
        assert.are.equal(x, json.decode(s), s)
        if x ~= math.floor(x) then assert.are.equal(string.format("%.15g", x), s) end
      end
    end)

    it("boxes numbers too large for a double instead of losing them", function()
      local v = json.decode("[1e400,-1.5e99999]")
      assert.are.equal(json.number_mt, getmetatable(v[1]))
      assert.are.equal("[1e400,-1.5e99999]", json.encode(v))
    end)

    it("decodes the Python-canonical fixture back to the same bytes", function()
      local canon = read_file("agent_request.json")
      assert.are.equal(canon, roundtrip(canon))
      -- the same document pretty-printed with \u escapes everywhere
      assert.are.equal(canon, roundtrip(read_file("agent_request_pretty.json")))
      local v = json.decode(canon)
      assert.is_true(json.is_array(v.tools[2].input_schema.required))
      assert.are.equal("12345678901234567890", tostring(v.tools[3].input_schema.properties.id.maximum))
      assert.are.equal(json.null, v.messages[3].content[2].text)
    end)
  end)

  describe("strings", function()
    it("decodes every escape, surrogate pairs included", function()
      local v = json.decode([=["\" \\ \/ \b \f \n \r \t \u0041 \u00e9 \u20AC \ud83d\ude00 \u0000"]=])
      assert.are.equal('" \\ / \b \f \n \r \t A \195\169 \226\130\172 \240\159\152\128 \0', v)
    end)

    it("encodes with the short escapes, \\u00XX for other controls, and keeps '/'", function()
      assert.are.equal([["\" \\ / \b \f \n \r \t \u0001 \u001f \u0000 ]] .. "\127" .. [["]],
        json.encode('" \\ / \b \f \n \r \t \1 \31 \0 \127'))
      assert.are.equal('"caf\195\169 \240\159\152\128 \226\128\168"',
        json.encode("caf\195\169 \240\159\152\128 \226\128\168"))
    end)

    it("rejects lone surrogates", function()
      assert_decode_error([["\ud800"]], "lone surrogate")
      assert_decode_error([["\udc00"]], "lone surrogate")
      assert_decode_error([["\ud83d\u0041"]], "lone surrogate")
      assert_decode_error([["\ud83d x"]], "lone surrogate")
      assert_decode_error([["\ud83d]], "lone surrogate")
    end)

    it("rejects invalid UTF-8 on decode", function()
      for _, bad in ipairs({ "\255", "\192\128", "\237\160\128", "\226\130", "\244\144\128\128",
        "\128", "abc\195", "\248\136\128\128\128" }) do
        assert_decode_error('"' .. bad .. '"', "invalid UTF-8")
        assert_decode_error('{"' .. bad .. '":1}', "invalid UTF-8")
      end
    end)

    it("replaces invalid UTF-8 with U+FFFD on encode", function()
      assert.are.equal('"a\\ufffdb\\ufffd\\ufffdc"', json.encode("a\255b\192\128c"))
      -- one U+FFFD per byte that starts no valid sequence: ED A0 80 is an
      -- encoded surrogate, three of them
      assert.are.equal('{"k\\ufffd":"\\ufffd\\ufffd\\ufffd"}', json.encode({ ["k\255"] = "\237\160\128" }))
    end)

    it("re-encodes long strings exactly (the 8-byte fast path and its tail)", function()
      for n = 0, 40 do
        local s = ("x"):rep(n) .. "\n" .. ("\195\169"):rep(n) .. '"' .. ("y"):rep(n % 9)
        assert.are.equal(s, json.decode(json.encode(s)))
      end
      local big = ("abcdefgh\\\"\n\t/"):rep(30000)
      assert.are.equal(big, json.decode(json.encode(big)))
    end)

    it("finds each special byte wherever it falls in the 16- and 8-byte blocks", function()
      for at = 0, 40 do
        local pad, tail = ("p"):rep(at), ("q"):rep(40 - at)
        for _, c in ipairs({ { [[\"]], '"' }, { [[\\]], "\\" }, { [[\n]], "\n" },
                             { [[\u00e9]], "\195\169" }, { "\195\169", "\195\169" } }) do
          local doc = '"' .. pad .. c[1] .. tail .. '"'
          assert.are.equal(pad .. c[2] .. tail, json.decode(doc))
          assert.are.equal(0, select("#", json.members(doc))) -- checked: valid, and no members
        end
        assert_decode_error('"' .. pad .. "\1" .. tail .. '"', ("control character 0x01 in string at byte %d"):format(at + 2))
        assert_decode_error('"' .. pad .. "\255" .. tail .. '"', "invalid UTF-8")
        assert_decode_error('"' .. pad .. [[\x]] .. tail .. '"', "invalid escape")
        assert_decode_error('"' .. pad .. tail, "unterminated string")
      end
    end)
  end)

  describe("rejects malformed documents", function()
    local cases = {
      { "", "unexpected end of input at byte 1" },
      { "   ", "unexpected end of input" },
      { '{"a":', "unexpected end of input" },
      { "[1,2", "unexpected end of input" },
      { '"abc', "unterminated string" },
      { "tru", "unexpected end of input" },
      { "nul", "unexpected end of input" },
      { "[1,]", "unexpected character ']' at byte 4" },
      { '{"a":1,}', "unexpected character '}' at byte 8" },
      { "[,1]", "unexpected character ','" },
      { "{'a':1}", "unexpected character '''" },
      { "['a']", "unexpected character '''" },
      { "NaN", "unexpected character 'N'" },
      { "[Infinity]", "unexpected character 'I'" },
      { "-Infinity", "unexpected character 'I'" },
      { "01", "leading zero" },
      { "-01", "leading zero" },
      { "1.", "unexpected end of input" },
      { ".5", "unexpected character '.'" },
      { "+1", "unexpected character '+'" },
      { "1e", "unexpected end of input" },
      { "1e+", "unexpected end of input" },
      { "-", "unexpected end of input" },
      { "0x10", "unexpected data after the document" },
      { [["\x41"]], "invalid escape '\\x'" },
      { [["\u12"]], "invalid \\u escape" },
      { [["\u12g4"]], "invalid \\u escape" },
      { '"a\tb"', "control character 0x09 in string at byte 3" },
      { '"a\nb"', "control character 0x0a" },
      { '"\0"', "control character 0x00" },
      { "[1 2]", "unexpected character '2'" },
      { '{"a" 1}', "unexpected character '1'" },
      { "{1:2}", "unexpected character '1'" },
      { '{"a":1 "b":2}', "unexpected character '\"'" },
      { "[] x", "unexpected data after the document at byte 4" },
      { "{}}", "unexpected data after the document" },
      { "[1] // comment", "unexpected data" },
      { "truex", "unexpected data" },
      { "True", "unexpected character 'T'" },
      { "\239\187\191{}", "unexpected byte 0xef" },
      { '{"a": x}', "json: unexpected character 'x' at byte 7" },
    }
    for _, c in ipairs(cases) do
      it(("%q"):format(c[1]), function()
        assert_decode_error(c[1], c[2])
      end)
    end

    it("limits nesting to 1000 levels", function()
      assert.is_not_nil(json.decode(("["):rep(1000) .. ("]"):rep(1000)))
      assert.is_not_nil(json.decode(('{"a":'):rep(1000) .. "1" .. ("}"):rep(1000)))
      assert_decode_error(("["):rep(1001) .. ("]"):rep(1001), "nesting deeper than 1000")
      assert_decode_error(('{"a":'):rep(1001) .. "1" .. ("}"):rep(1001), "nesting deeper than 1000")
      assert_decode_error(("["):rep(100000), "nesting deeper than 1000")
    end)

    it("returns nil, err for non-strings", function()
      local v, err = json.decode(nil)
      assert.is_nil(v)
      assert.matches("cannot decode a nil", err)
    end)

    it("lets the last duplicate key win and allows surrounding whitespace", function()
      assert.are.equal(3, json.decode(' \t\r\n{"a":1, "a" : 2,"a":3}\n ').a)
      local keys = {}
      for i = 1, 40 do keys[i] = ('"k":%d'):format(i) end -- past the pending-pairs batch
      assert.are.equal(40, json.decode("{" .. table.concat(keys, ",") .. "}").k)
    end)
  end)

  describe("encode", function()
    it("follows the array rules", function()
      assert.are.equal("[1,2,3]", json.encode({ 1, 2, 3 }))
      assert.are.equal("{}", json.encode({}))
      assert.are.equal("[]", json.encode(json.array()))
      assert.are.equal("[]", json.encode(json.array({})))
      assert.are.equal('{"1":1,"2":2,"4":4}', json.encode({ 1, 2, nil, 4 }))
      assert.are.equal('{"1":"a","2":"b","x":1}', json.encode({ "a", "b", x = 1 }))
      assert.are.equal('{"10":1}', json.encode({ [10] = 1 }))
      assert.are.equal('{"1.5":true,"2":false}', json.encode({ [1.5] = true, [2] = false }))
      -- a marked array is an array whatever else it holds: 1..#t
      assert.are.equal('["a","b"]', json.encode(json.array({ "a", "b", x = 1 })))
    end)

    it("sorts object keys bytewise, so equal tables give equal bytes", function()
      assert.are.equal('{"A":0,"a":2,"b":1,"c":{"y":2,"z":1}}',
        json.encode({ b = 1, a = 2, c = { z = 1, y = 2 }, A = 0 }))
      local t = {}
      for i = 1, 200 do t["key" .. (i * 7919 % 1000)] = i end
      local s = json.encode(t)
      local last = ""
      for k in s:gmatch('"(key%d+)"') do
        assert.is_true(k > last)
        last = k
      end
    end)

    it("handles scalars and json.null", function()
      assert.are.equal("null", json.encode(json.null))
      assert.are.equal("null", json.encode(nil))
      assert.are.equal("true", json.encode(true))
      assert.are.equal("false", json.encode(false))
      assert.are.equal('"x"', json.encode("x"))
    end)

    it("refuses what JSON cannot express", function()
      local function fails(v, fragment)
        local s, err = json.encode(v)
        assert.is_nil(s)
        assert.is_truthy(err:find(fragment, 1, true), err)
      end
      fails(0 / 0, "json: cannot encode NaN")
      fails(1 / 0, "json: cannot encode infinity")
      fails({ x = -1 / 0 }, "infinity")
      fails(print, "json: cannot encode function")
      fails({ f = print }, "json: cannot encode function")
      fails(coroutine.create(print), "json: cannot encode thread")
      fails(io.stdout, "json: cannot encode userdata")
      fails({ [true] = 1 }, "cannot encode a boolean table key")
      fails({ [1] = "a", ["1"] = "b" }, "duplicate key")
      fails(setmetatable({ "12x" }, json.number_mt), "invalid boxed number")
      local cyc = {}
      cyc.self = cyc
      fails(cyc, "nesting deeper than 1000 (or a cycle)")
      local arr = json.array()
      arr[1] = arr
      fails(arr, "cycle")
    end)

    it("allows 1000 levels and no more", function()
      local function nest(n)
        local root = json.array()
        local t = root
        for _ = 2, n do
          t[1] = json.array()
          t = t[1]
        end
        return root
      end
      assert.are.equal(("["):rep(1000) .. ("]"):rep(1000), json.encode(nest(1000)))
      assert.is_nil(json.encode(nest(1001)))
    end)

    it("never emits invalid JSON for arbitrary bytes", function()
      math.randomseed(7)
      for _ = 1, 2000 do
        local bytes = {}
        for i = 1, math.random(0, 24) do bytes[i] = string.char(math.random(0, 255)) end
        local s = table.concat(bytes)
        local out = assert(json.encode({ [s] = s }))
        local back, err = json.decode(out)
        assert(back ~= nil, err)
        local k, v = next(back)
        assert.are.equal(k, v)
        if not s:find("[\128-\255]") then assert.are.equal(s, v) end
      end
    end)
  end)

  describe("re-entrancy", function()
    it("survives __gc finalizers that use the codec in the middle of a call", function()
      local nested, bad, inside = 0, nil, false
      local function finalizer()
        if inside then nested = nested + 1 end
        local s = json.encode({ x = json.decode('[1,{"y":"z\\n"}]'), k = { b = 1, a = 2 } })
        if s ~= '{"k":{"a":2,"b":1},"x":[1,{"y":"z\\n"}]}' then bad = s end
      end
      local big = {}
      for i = 1, 300 do
        big[i] = { id = "item" .. i, text = ("line \"q\"\n"):rep(10), tags = json.array({ "a", "b" }) }
      end
      local doc = assert(json.encode(json.array(big)))
      -- The proxies stay reachable until just before the codec call, so the
      -- collector can only find them dead (and run their finalizers) while
      -- the codec allocates; a collector that never pauses then runs a step
      -- on almost every allocation, so finalizers land inside the call on
      -- every run instead of only when the default pacing happens to line up.
      local pause = collectgarbage("setpause", 0)
      local stepmul = collectgarbage("setstepmul", 1000)
      -- The new pause only counts from the next cycle: after earlier specs
      -- grew the heap, the current threshold can sit far above what this
      -- test allocates, and no step would run at all. "restart" moves the
      -- threshold to the heap's present size.
      collectgarbage("restart")
      finally(function()
        collectgarbage("setpause", pause)
        collectgarbage("setstepmul", stepmul)
      end)
      for _ = 1, 30 do
        local alive = {}
        for i = 1, 300 do
          alive[i] = newproxy(true)
          getmetatable(alive[i]).__gc = finalizer
        end
        alive = nil -- luacheck: ignore (dropping the last reference is the point)
        inside = true
        local s = json.encode(json.decode(doc))
        inside = false
        assert.are.equal(doc, s)
      end
      assert.is_nil(bad)
      assert.is_true(nested > 0, "no finalizer ran inside a codec call: the test proves nothing")
    end)
  end)

  describe("helpers", function()
    it("json.array marks a table in place or makes a new one", function()
      local t = { 1, 2 }
      assert.are.equal(t, json.array(t))
      assert.is_true(json.is_array(t))
      assert.is_true(json.is_array(json.array()))
      assert.is_false(json.is_array({}))
      assert.is_false(json.is_array("[]"))
    end)

    it("json.number boxes a number text", function()
      local n = json.number("123456789012345678901234567890")
      assert.are.equal("123456789012345678901234567890", tostring(n))
      assert.are.equal('{"n":123456789012345678901234567890}', json.encode({ n = n }))
      assert.are.equal(n, json.number("123456789012345678901234567890"))
      assert.are.equal("0.5", tostring(json.number(0.5)))
      local bad, err = json.number("12abc")
      assert.is_nil(bad)
      assert.matches("not a JSON number", err)
    end)
  end)

  -- lua-cjson as an oracle for documents it handles (no empty arrays, no
  -- integers past 2^53): both decoders must agree value for value, floats
  -- bit for bit (our fast path against cjson's strtod).
  describe("differential against lua-cjson", function()
    local function agree(ours, theirs, path)
      path = path or "$"
      if theirs == cjson.null then
        assert(ours == json.null, path)
        return
      end
      assert(type(ours) == type(theirs), path .. ": " .. type(ours) .. " vs " .. type(theirs))
      if type(ours) ~= "table" then
        assert(ours == theirs, path .. ": " .. tostring(ours) .. " vs " .. tostring(theirs))
        return
      end
      local n = 0
      for k, v in pairs(theirs) do
        n = n + 1
        agree(ours[k], v, path .. "." .. tostring(k))
      end
      for _ in pairs(ours) do n = n - 1 end
      assert(n == 0, path .. ": key count differs")
      if json.is_array(ours) then assert(#ours == #theirs and #ours > 0, path) end
    end

    local rng_state = 12345
    local function rnd(n) -- own LCG: the corpus must not depend on math.random's libc
      rng_state = (rng_state * 1103515245 + 12345) % 2147483648
      return rng_state % n
    end
    local function rnd_number()
      local r = rnd(4)
      local sign = rnd(2) == 0 and "" or "-"
      if r == 0 then return sign .. tostring(rnd(100000)) end
      if r == 1 then return sign .. tostring(rnd(2147483647) * 4194304 + rnd(4194304)) end
      local digits = {}
      for i = 1, 1 + rnd(17) do digits[i] = tostring(rnd(10)) end
      local mant = tostring(1 + rnd(9)) .. "." .. table.concat(digits)
      if r == 2 then return sign .. mant end
      return sign .. mant .. (rnd(2) == 0 and "e" or "E-") .. tostring(rnd(300))
    end
    local chars = { "a", "Z", " ", "\\n", "\\\"", "\\\\", "\\/", "\\u00e9", "\\ud83d\\ude00",
      "\195\169", "\226\130\172", "\240\159\154\128", "\\t", "x", "0" }
    local function rnd_string()
      local parts = {}
      for i = 1, rnd(12) do parts[i] = chars[1 + rnd(#chars)] end
      return '"' .. table.concat(parts) .. '"'
    end
    local function rnd_doc(depth)
      local r = rnd(depth > 4 and 5 or 7)
      if r == 0 then return rnd_number() end
      if r == 1 then return rnd_string() end
      if r == 2 then return ({ "true", "false", "null" })[1 + rnd(3)] end
      if r == 3 or r == 4 then return rnd_number() end
      if r == 5 then
        local items = {}
        for i = 1, 1 + rnd(5) do items[i] = rnd_doc(depth + 1) end
        return "[ " .. table.concat(items, " ,\n") .. "]"
      end
      local items = {}
      for i = 1, rnd(5) do items[i] = rnd_string() .. ":" .. rnd_doc(depth + 1) end
      return "{" .. table.concat(items, ",") .. "}"
    end

    it("agrees on the fixtures and 3000 random documents", function()
      local fixture = read_file("agent_request_pretty.json"):gsub("%[%]", "[0]")
        :gsub("%-?%d%d%d%d%d%d%d%d%d%d%d%d%d%d%d%d+", "7")
      local corpus = { fixture }
      for i = 1, 3000 do corpus[#corpus + 1] = rnd_doc(0) end
      for _, doc in ipairs(corpus) do
        local theirs = cjson.decode(doc)
        local ours, err = json.decode(doc)
        assert(ours ~= nil, err)
        agree(ours, theirs)
        -- and our output reads back the same in cjson
        agree(ours, cjson.decode((assert(json.encode(ours)))))
      end
    end)
  end)

  -- Seeded property test: random Lua values made of what decode produces.
  describe("members", function()
    local doc = ' {"model": "m\\u0031", "stream" : true, "n": [1, {"a": [null]}, "x"], "e": {},'
      .. ' "k\\u0065y": 2, "key": 3, "big": 123456789012345678901} '

    it("gives each top-level value's byte range, to decode on its own", function()
      local spans, kind = json.members(doc)
      assert.are.equal("object", kind)
      local whole = json.decode(doc)
      local n = 0
      for key, span in pairs(spans) do
        n = n + 1
        assert_same(whole[key], json.decode(doc, span[1], span[2]))
      end
      assert.are.equal(6, n) -- "k\u0065y" is "key": decoded keys, the last one wins
      assert.are.equal(3, json.decode(doc, spans.key[1], spans.key[2]))
      assert.are.equal('[1, {"a": [null]}, "x"]', doc:sub(spans.n[1], spans.n[2]))
    end)

    it("reads an array's members, and only the first max of them when asked", function()
      local spans = json.members(doc)
      local items, kind = json.members(doc, spans.n[1], spans.n[2])
      assert.are.equal("array", kind)
      assert.are.equal(3, #items)
      assert.are.equal('{"a": [null]}', doc:sub(items[2][1], items[2][2]))
      local first = json.members(doc, spans.n[1], spans.n[2], 2)
      assert.are.equal(2, #first)
      -- what max leaves unread is not checked: the document's own check is the first call
      assert.are.equal(1, #json.members("[1, oops", 1, 8, 1))
    end)

    it("gives nil and no error for a valid scalar, and refuses ranges outside the string", function()
      assert.are.equal(0, select("#", json.members(' "just a string" ')))
      assert.are.same({ nil, "json: byte range outside the string" }, { json.members("{}", 1, 3) })
      assert.are.same({ nil, "json: byte range outside the string" }, { json.decode("[1]", 0, 2) })
      assert.are.same({}, json.members("{}"))
      assert.are.equal("array", select(2, json.members(" [ ] ")))
    end)
  end)

  describe("select", function()
    local chunk = '{"id":"c1","object":"chat.completion.chunk","choices":[{"index":0,'
      .. '"delta":{"content":"Hi","tool_calls":[{"index":0,"function":{"arguments":"{}"}}]},'
      .. '"finish_reason":null}],"usage":{"prompt_tokens":3}}'
    local sel = json.selector({ "id", "choices.1.delta.content", "choices.1.delta.tool_calls",
      "choices.1.finish_reason", "usage", "choices.2.delta.content", "missing.deep" })

    it("gives the values at its paths, in its order, and nil where a path is absent", function()
      local ok, id, content, calls, finish, usage, second, missing = json.select(sel, chunk)
      assert.is_true(ok)
      assert.are.equal("c1", id)
      assert.are.equal("Hi", content)
      assert.are.equal(json.null, finish) -- null stays json.null, as decode gives it
      assert_same(json.decode(chunk).choices[1].delta.tool_calls, calls) -- a table, an array
      assert.is_true(json.is_array(calls))
      assert.are.same({ prompt_tokens = 3 }, usage)
      assert.is_nil(second)
      assert.is_nil(missing)
      assert.are.equal(8, select("#", json.select(sel, chunk)))
    end)

    it("matches indices in arrays only and keys in objects only, escaped keys by their text", function()
      local s2 = json.selector({ "a.1", "a.b", "k\"q" })
      assert.are.same({ true, 5, nil, nil }, { json.select(s2, '{"a":[5,6]}') })
      assert.are.same({ true, nil, nil, nil }, { json.select(s2, '{"a":{"1":5}}') })
      assert.are.same({ true, nil, 7, 8 }, { json.select(s2, '{"\\u0061":{"\\u0062":7},"k\\"q":8}') })
    end)

    it("lets the last duplicate key win, forgetting what the first one held", function()
      local ok, id, content = json.select(sel, '{"id":"a","choices":[{"delta":{"content":"x"}}],'
        .. '"choices":[{"delta":{}}],"id":"b"}')
      assert.is_true(ok)
      assert.are.equal("b", id)
      assert.is_nil(content)
    end)

    it("fails a malformed document as decode fails it, and a scalar without an error", function()
      for _, bad in ipairs({ '{"id":"x",}', '{"id":"x"} tail', '{"choices":[{"delta":{"content":"\\q"}}]}',
                             '{"a":' .. ("["):rep(1001) }) do
        local _, derr = json.decode(bad)
        assert.are.same({ false, derr }, { json.select(sel, bad) })
      end
      assert.are.same({ false, nil }, { json.select(sel, '"just a string"') })
      assert.are.same({ true }, { json.select(json.selector({}), "[1, 2]") })
    end)

    it("agrees with decode-then-index on 3000 random documents", function()
      math.randomseed(7)
      local keys = { "a", "b", "c" }
      local paths = { "a", "b.a", "b.1", "c.2.b", "b.c.a", "1", "2.a" }
      local psel = json.selector(paths)
      local function gen(depth)
        local r = math.random(depth > 2 and 4 or 6)
        if r == 1 then return json.null end
        if r == 2 then return math.random(100) end
        if r == 3 then return ("s"):rep(math.random(0, 3)) end
        if r == 4 then return math.random(2) == 1 end
        if r == 5 then
          local t = json.array()
          for i = 1, math.random(0, 3) do t[i] = gen(depth + 1) end
          return t
        end
        local t = {}
        for _ = 1, math.random(0, 3) do t[keys[math.random(#keys)]] = gen(depth + 1) end
        return t
      end
      local function at(v, path)
        for seg in path:gmatch("[^.]+") do
          if type(v) ~= "table" then return nil end
          local i = tonumber(seg)
          if i and not json.is_array(v) or not i and json.is_array(v) then return nil end
          v = v[i or seg]
        end
        return v
      end
      for _ = 1, 3000 do
        local doc = assert(json.encode(gen(0)))
        local got = { json.select(psel, doc) }
        local whole = json.decode(doc)
        if type(whole) ~= "table" then
          assert.are.same({ false, nil }, got)
        else
          assert.is_true(got[1])
          for i, p in ipairs(paths) do
            local ok, why = same(at(whole, p), got[i + 1], p)
            assert(ok, doc .. ": " .. tostring(why))
          end
        end
      end
    end)

    it("refuses a path that is empty, indexes from 0, or runs into another", function()
      for _, paths in ipairs({ { "" }, { "a..b" }, { "a.0" }, { "a", "a.b" }, { "a.b", "a" }, { "a", "a" } }) do
        assert.has_error(function() json.selector(paths) end)
      end
    end)
  end)

  describe("properties", function()
    local key_pool = { "a", "b", "type", "required", "", "k\"q", "\195\169", "1", "x y", "\\", "\n" }
    local str_pool = { "", "plain", "tab\there", "quote\"s", "back\\slash", "ctl\1\31", "nul\0",
      "caf\195\169", "\240\159\152\128", "\226\128\168", "/path/", ("long "):rep(20) }

    local function gen(depth)
      local r = math.random(depth > 3 and 7 or 9)
      if r == 1 then return json.null end
      if r == 2 then return math.random(2) == 1 end
      if r == 3 then return math.random(-2 ^ 31, 2 ^ 31) * (math.random(2) == 1 and 1 or 2 ^ 21) end
      if r == 4 then return (math.random() - 0.5) * 10 ^ math.random(-300, 300) end
      if r == 5 then return str_pool[math.random(#str_pool)] .. str_pool[math.random(#str_pool)] end
      if r == 6 then return json.number(tostring(math.random(1, 9)) .. ("0"):rep(math.random(16, 30))) end
      if r == 7 then return math.random(0, 100) end
      if r == 8 then
        local t = json.array()
        for i = 1, math.random(0, 5) do t[i] = gen(depth + 1) end
        return t
      end
      local t = {}
      for _ = 1, math.random(0, 5) do
        t[key_pool[math.random(#key_pool)] .. key_pool[math.random(#key_pool)]] = gen(depth + 1)
      end
      return t
    end

    it("decode(encode(x)) equals x and encode(decode(s)) == s, for 5000 values", function()
      math.randomseed(20240611)
      for _ = 1, 5000 do
        local x = gen(0)
        local s, err = json.encode(x)
        assert(s, err)
        local back, derr = json.decode(s)
        assert(back ~= nil, derr)
        assert_same(x, back)
        assert.are.equal(s, json.encode(back))
        if type(x) == "table" and getmetatable(x) ~= json.number_mt then
          local spans = json.members(s)
          for k, span in pairs(spans) do assert_same(back[k], json.decode(s, span[1], span[2])) end
        end
      end
    end)
  end)
end)
