"""Broadcast conditions: the safe JavaScript subset (spec 12.5)."""

import ast
import inspect

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from mpush.protocol import condition as condition_module
from mpush.protocol.condition import VARIABLES, Condition, ConditionError, compile_condition


def matches(text, **variables):
    return compile_condition(text).matches(variables)


def js_quote(text):
    """A single-quoted literal for C{text}, using only the supported escapes."""
    escaped = text.replace("\\", "\\\\").replace("'", "\\'")
    return "'" + escaped.replace("\n", "\\n").replace("\r", "\\r").replace("\t", "\\t") + "'"


def utf16_units(text):
    return len(text.encode("utf-16-le")) // 2


class ConditionTestCase(SynchronousTestCase):
    def assertMatches(self, text, **variables):
        self.assertIs(matches(text, **variables), True, text)

    def assertNoMatch(self, text, **variables):
        self.assertIs(matches(text, **variables), False, text)

    def assertCompileError(self, text, column, reason, **limits):
        with self.assertRaises(ConditionError, msg=text) as caught:
            compile_condition(text, **limits)
        self.assertEqual(caught.exception.column, column, str(caught.exception))
        self.assertIn(reason, caught.exception.reason)
        self.assertEqual(str(caught.exception), f"column {column}: {caught.exception.reason}")
        return caught.exception


class LiteralTests(ConditionTestCase):
    def test_booleans_and_null(self):
        self.assertMatches("true")
        self.assertNoMatch("false")
        self.assertMatches("null == null")
        self.assertMatches("null === null")

    def test_quotes(self):
        self.assertMatches("'abc' === \"abc\"")
        self.assertMatches("'say \"hi\"' == \"say \\\"hi\\\"\"")
        self.assertMatches("\"it's\" == 'it\\'s'")

    def test_escapes(self):
        self.assertMatches("'a\\\\b'.length == 3")
        self.assertMatches("'a\\nb'.indexOf('\\n') == 1")
        self.assertMatches("'\\t\\r'.length == 2")
        self.assertMatches("'a\\tb' != 'a\\\\tb'")

    def test_numbers(self):
        self.assertMatches("10 > 9")
        self.assertMatches("1 == 1.0")
        self.assertMatches("0.5 < 1")
        self.assertMatches("0 == 0")
        self.assertMatches("1.25 === 1.25")
        self.assertNoMatch("1.5 == 1.25")

    def test_javascript_whitespace(self):
        self.assertMatches("\ttrue\n")
        self.assertMatches("\u00a0true\u2028&&\u3000\ufefftrue\u2029")
        self.assertMatches("\r\n1\v==\f1 ")


class VariableTests(ConditionTestCase):
    def test_each_variable(self):
        self.assertEqual(VARIABLES, {"userId", "tags", "clientVersion", "osName", "osVersion"})
        for name in VARIABLES:
            condition = compile_condition(f"{name} == 'x'")
            self.assertTrue(condition.matches({name: "x"}), name)
            others = {other: "x" for other in VARIABLES if other != name}
            self.assertFalse(condition.matches(others), name)

    def test_missing_variable_is_null(self):
        self.assertMatches("userId == null && tags === null")

    def test_string_subclass_is_a_string(self):
        class Tag(str):
            pass

        self.assertMatches("tags.startsWith('a')", tags=Tag("ab"))

    def test_non_string_value_is_false(self):
        """A bad value is an evaluation error, not a null: the condition fails."""
        for value in (5, b"x", ["x"], True):
            self.assertNoMatch("userId == null || true", userId=value)
        self.assertMatches("userId == null || true", userId=None)

    def test_not_a_mapping(self):
        self.assertIs(compile_condition("userId == null").matches(None), False)
        self.assertIs(compile_condition("userId == null").matches(["userId"]), False)


class OperatorTests(ConditionTestCase):
    def test_or_and_truth_tables(self):
        for left in (True, False):
            for right in (True, False):
                text_or = f"{str(left).lower()} || {str(right).lower()}"
                text_and = f"{str(left).lower()} && {str(right).lower()}"
                self.assertIs(matches(text_or), left or right, text_or)
                self.assertIs(matches(text_and), left and right, text_and)

    def test_or_and_yield_operands(self):
        self.assertMatches("(userId || 'guest') == 'guest'")
        self.assertMatches("(userId || 'guest') == 'u1'", userId="u1")
        self.assertMatches("(userId && 'x') == null")
        self.assertMatches("(userId && 'x') == 'x'", userId="u1")
        self.assertMatches("(userId && 'x') === ''", userId="")

    def test_not_and_truthiness(self):
        for falsy in ("false", "null", "0", "''", '""', "0.0", "-0"):
            self.assertMatches(f"!{falsy}")
        for truthy in ("true", "'0'", "'false'", "' '", "1", "-1", "0.5"):
            self.assertMatches(f"!!{truthy}")
        self.assertMatches("!!!false")

    def test_equality_same_type(self):
        self.assertMatches("'a' == 'a'")
        self.assertMatches("'a' != 'b'")
        self.assertMatches("'a' === 'a'")
        self.assertMatches("'a' !== 'b'")
        self.assertNoMatch("'a' !== 'a'")
        self.assertMatches("true == true")
        self.assertMatches("true != false")
        self.assertMatches("2 !== 3")
        self.assertMatches("-0 === 0")

    def test_equality_mixed_types_never_equal(self):
        for left, right in (("'1'", "1"), ("true", "1"), ("null", "false"), ("null", "''"), ("''", "0")):
            for operator in ("==", "==="):
                self.assertNoMatch(f"{left} {operator} {right}")
            for operator in ("!=", "!=="):
                self.assertMatches(f"{left} {operator} {right}")

    def test_relational_numbers(self):
        self.assertMatches("1 < 2")
        self.assertNoMatch("2 < 2")
        self.assertMatches("2 <= 2")
        self.assertNoMatch("3 <= 2")
        self.assertMatches("3 > 2")
        self.assertNoMatch("2 > 2")
        self.assertMatches("2 >= 2")
        self.assertNoMatch("1 >= 2")
        self.assertMatches("-5 < -1.5")

    def test_relational_strings(self):
        self.assertMatches("'abc' < 'abd'")
        self.assertMatches("'B' < 'a'")
        self.assertMatches("'10' < '9'")
        self.assertMatches("'' < 'a'")
        self.assertMatches("'ab' <= 'ab'")
        self.assertMatches("'b' > 'a'")
        self.assertMatches("'ab' >= 'a'")
        self.assertMatches("osVersion >= '10'", osVersion="9.1")

    def test_relational_strings_use_utf16_order(self):
        """JavaScript orders by UTF-16 code unit: U+FFFF sorts after U+1F600."""
        self.assertMatches("'\uffff' > '\U0001f600'")
        self.assertMatches("userId < tags", userId="\U0001f600", tags="\uffff")
        self.assertNoMatch("userId >= tags", userId="\U0001f600", tags="\uffff")

    def test_relational_mixed_is_false(self):
        for left, right in (("'1'", "2"), ("2", "'1'"), ("null", "1"), ("null", "null"), ("true", "false")):
            for operator in ("<", "<=", ">", ">="):
                self.assertNoMatch(f"{left} {operator} {right}")
        self.assertNoMatch("osVersion >= 10", osVersion="11")

    def test_booleans_do_not_order(self):
        self.assertNoMatch("1 < 2 < 3")

    def test_unary_minus(self):
        self.assertMatches("-1 < 0")
        self.assertMatches("--1 == 1")
        self.assertMatches("-(2) === -2")
        self.assertMatches("-userId.length == -3", userId="abc")

    def test_unary_minus_on_non_number_is_false(self):
        self.assertNoMatch("-userId == null || true", userId="x")
        self.assertNoMatch("-userId == null || true")
        self.assertNoMatch("!-'1'")


class PrecedenceTests(ConditionTestCase):
    def test_and_binds_tighter_than_or(self):
        self.assertMatches("true || false && false")
        self.assertMatches("false && false || true")
        self.assertNoMatch("(true || false) && false")

    def test_relational_binds_tighter_than_equality(self):
        self.assertMatches("1 < 2 == true")
        self.assertMatches("true == 2 > 1")

    def test_equality_binds_tighter_than_and(self):
        self.assertMatches("userId == 'a' && tags == 'b'", userId="a", tags="b")
        self.assertNoMatch("userId == 'a' && tags == 'b'", userId="a", tags="c")

    def test_not_binds_tighter_than_equality(self):
        """(!'x') == 'y' is false == 'y'; !('x' == 'y') would be true."""
        self.assertNoMatch("!'x' == 'y'")
        self.assertMatches("!('x' == 'y')")

    def test_member_binds_tighter_than_not(self):
        self.assertMatches("!userId.includes('z')", userId="abc")

    def test_minus_binds_tighter_than_relational(self):
        self.assertMatches("-1 < 0")
        self.assertMatches("0 > -1")


class ShortCircuitTests(ConditionTestCase):
    guarded = "userId != null && userId.startsWith('u')"

    def test_guarded_method_on_null(self):
        self.assertNoMatch(self.guarded)
        self.assertNoMatch(self.guarded, userId=None)
        self.assertMatches(self.guarded, userId="u42")
        self.assertNoMatch(self.guarded, userId="x42")

    def test_right_side_of_or_not_evaluated(self):
        self.assertMatches("userId == null || userId.length > 3")
        self.assertMatches("true || userId.length")
        self.assertMatches("userId == null || userId.length > 3", userId="abcd")

    def test_right_side_of_and_not_evaluated(self):
        self.assertMatches("!(false && userId.length)")


class NullTests(ConditionTestCase):
    def test_null_comparisons(self):
        self.assertMatches("userId == null")
        self.assertMatches("userId != 'x'")
        self.assertNoMatch("userId == ''")

    def test_method_on_null_fails_the_whole_condition(self):
        """An error is not a null result: '!null.startsWith()' must not match."""
        self.assertNoMatch("!userId.startsWith('u')")
        self.assertNoMatch("userId.length == null || true")
        self.assertNoMatch("tags.indexOf('vip') == -1")
        self.assertNoMatch("null.length != 1")

    def test_null_argument_fails_the_whole_condition(self):
        self.assertNoMatch("'abcnull'.includes(userId)")
        self.assertNoMatch("!'abc'.includes(userId)")
        self.assertMatches("!'abc'.includes(userId)", userId="z")


class MethodTests(ConditionTestCase):
    def test_index_of(self):
        self.assertMatches("tags.indexOf('vip') == 4", tags="new,vip")
        self.assertMatches("tags.indexOf('vip') === -1", tags="new")
        self.assertMatches("tags.indexOf('') == 0", tags="new")
        self.assertMatches("tags.indexOf('n') == 0", tags="new")
        self.assertMatches("''.indexOf('a') == -1")

    def test_index_of_counts_utf16_units(self):
        self.assertMatches("userId.indexOf('b') == 3", userId="\U0001f600ab")
        self.assertMatches("userId.indexOf('b') == 2", userId="\u00e9ab")

    def test_includes_starts_ends(self):
        self.assertMatches("tags.includes('vip')", tags="a,vip,b")
        self.assertNoMatch("tags.includes('VIP')", tags="a,vip,b")
        self.assertMatches("tags.includes('')", tags="")
        self.assertMatches("osName.startsWith('And')", osName="Android")
        self.assertNoMatch("osName.startsWith('droid')", osName="Android")
        self.assertMatches("osName.endsWith('droid')", osName="Android")
        self.assertNoMatch("osName.endsWith('And')", osName="Android")

    def test_length(self):
        self.assertMatches("userId.length == 5", userId="hello")
        self.assertMatches("''.length == 0")
        self.assertMatches("userId.length === 2", userId="\U0001f600")
        self.assertMatches("userId.length === 2", userId="\u4e2d\u6587")

    def test_case_conversion(self):
        self.assertMatches("osName.toLowerCase() == 'android'", osName="AnDroid")
        self.assertMatches("osName.toUpperCase() == 'IOS'", osName="ios")
        self.assertMatches("'\u00df'.toUpperCase() == 'SS'")

    def test_chains_and_receivers(self):
        self.assertMatches("userId.toLowerCase().startsWith('ab')", userId="ABC")
        self.assertMatches("userId.toUpperCase().toLowerCase().length == 3", userId="ABC")
        self.assertMatches("'abc'.length == 3")
        self.assertMatches("('ab').toUpperCase() == 'AB'")
        self.assertMatches("'a,b'.includes(tags.toLowerCase())", tags="B")

    def test_non_string_receiver_or_argument_is_false(self):
        self.assertNoMatch("(1).length == null || true")
        self.assertNoMatch("true.length == null || true")
        self.assertNoMatch("userId.length.length == 1 || true", userId="x")
        self.assertNoMatch("'a1'.indexOf(1) == 1 || true")
        self.assertNoMatch("'atrue'.includes(true) || true")


class ResultTests(ConditionTestCase):
    def test_non_boolean_result_is_false(self):
        self.assertNoMatch("userId", userId="x")
        self.assertNoMatch("'true'")
        self.assertNoMatch("1")
        self.assertNoMatch("null")
        self.assertNoMatch("userId || 'x'")
        self.assertNoMatch("userId.length", userId="x")
        self.assertNoMatch("userId && true", userId="")

    def test_boolean_operand_result(self):
        self.assertMatches("userId && true", userId="x")
        self.assertMatches("!userId")

    def test_condition_object(self):
        condition = compile_condition("userId == 'a'")
        self.assertIsInstance(condition, Condition)
        self.assertEqual(condition.source, "userId == 'a'")
        self.assertEqual(repr(condition), "Condition(\"userId == 'a'\")")
        self.assertFalse(hasattr(condition, "__dict__"))
        # Compiled once, evaluated per connection.
        self.assertEqual(
            [condition.matches({"userId": user}) for user in ("a", "b", None, "a")],
            [True, False, False, True],
        )


class CompileErrorTests(ConditionTestCase):
    def test_error_type(self):
        error = self.assertCompileError("foo", 1, "unknown identifier 'foo'")
        self.assertIsInstance(error, ValueError)

    def test_unknown_identifier(self):
        self.assertCompileError("userId == undefined", 11, "unknown identifier 'undefined'")
        self.assertCompileError("user_id == 'x'", 1, "unknown identifier 'user_id'")
        self.assertCompileError("this.constructor", 1, "unknown identifier 'this'")
        self.assertCompileError("NaN != NaN", 1, "unknown identifier 'NaN'")
        self.assertCompileError("\u00fcser", 1, "unexpected character '\u00fc'")

    def test_unterminated_string(self):
        self.assertCompileError("userId == 'abc", 11, "unterminated string")
        self.assertCompileError('"abc\'', 1, "unterminated string")
        self.assertCompileError("'a\nb'", 1, "unterminated string")
        self.assertCompileError("'a\u2028b'", 1, "unterminated string")
        self.assertCompileError("'abc\\", 1, "unterminated string")
        self.assertCompileError("'abc\\'", 1, "unterminated string")

    def test_unsupported_escape(self):
        self.assertCompileError("'\\x41'", 2, "unsupported escape '\\x'")
        self.assertCompileError("'\\u0041'", 2, "unsupported escape '\\u'")

    def test_trailing_tokens(self):
        self.assertCompileError("true false", 6, "found 'false' after a complete expression")
        self.assertCompileError("(true))", 7, "found ')' after a complete expression")
        self.assertCompileError("1 2", 3, "found a number after")
        self.assertCompileError("'a' 'b'", 5, "found a string after")

    def test_unknown_method(self):
        self.assertCompileError("userId.substring(1)", 8, "unknown method 'substring'")
        self.assertCompileError("userId.toString()", 8, "unknown method 'toString'")
        self.assertCompileError("userId.match('a')", 8, "unknown method 'match'")

    def test_assignment_and_bitwise(self):
        self.assertCompileError("userId = 'x'", 8, "assignment '=' is not supported")
        self.assertCompileError("x => 1", 3, "assignment '='")
        self.assertCompileError("true => 1", 6, "assignment '='")
        self.assertCompileError("true & false", 6, "use '&&'")
        self.assertCompileError("true | false", 6, "use '||'")

    def test_function_call_of_identifier(self):
        self.assertCompileError("userId('x')", 1, "'userId' is a variable, not a function")
        self.assertCompileError("eval('true')", 1, "unknown function 'eval'")
        self.assertCompileError("Function('return 1')()", 1, "unknown function 'Function'")
        self.assertCompileError("(userId)('x')", 9, "only the string methods")
        self.assertCompileError("userId.toLowerCase()()", 21, "only the string methods")
        self.assertCompileError("'a'('x')", 4, "only the string methods")

    def test_dangerous_properties(self):
        self.assertCompileError("userId.constructor", 8, "unknown property 'constructor'")
        self.assertCompileError("userId.__proto__", 8, "unknown property '__proto__'")
        self.assertCompileError("''.prototype", 4, "unknown property 'prototype'")
        self.assertCompileError("userId.constructor.constructor('return 1')()", 8, "unknown property 'constructor'")
        self.assertCompileError("userId.constructor('x')", 8, "unknown method 'constructor'")
        self.assertCompileError("userId['constructor']", 7, "unexpected character '['")
        self.assertCompileError("userId.$x", 8, "unknown property '$x'")

    def test_member_misuse(self):
        self.assertCompileError("userId.toLowerCase == 1", 8, "method 'toLowerCase' must be called")
        self.assertCompileError("userId.length()", 8, "'length' is a property, not a method")
        self.assertCompileError("userId.indexOf()", 16, "indexOf() takes exactly one argument")
        self.assertCompileError("userId.includes('a', 1)", 20, "includes() takes exactly one argument")
        self.assertCompileError("userId.toUpperCase('a')", 20, "toUpperCase() takes no arguments")
        self.assertCompileError("userId.", 8, "expected a property or method name after '.', found end")
        self.assertCompileError("userId.'a'", 8, "found a string")
        self.assertCompileError("userId..length", 8, "found '.'")

    def test_numbers(self):
        self.assertCompileError("007 == 7", 1, "leading zeros")
        self.assertCompileError("1. == 1", 3, "digits after '.'")
        self.assertCompileError("1.length", 3, "digits after '.'")
        self.assertCompileError("1e5", 2, "a name cannot start right after a number")
        self.assertCompileError("0x10", 2, "a name cannot start right after a number")
        self.assertCompileError(".5 < 1", 1, "expected a value, found '.'")
        self.assertCompileError("\u0663 == 3", 1, "unexpected character")
        self.assertCompileError("1.5.3", 5, "expected a property or method name after '.', found a number")

    def test_missing_operands(self):
        self.assertCompileError("", 1, "empty condition")
        self.assertCompileError("  \n ", 5, "empty condition")
        self.assertCompileError("true ||", 8, "expected a value, found end of condition")
        self.assertCompileError("== 1", 1, "expected a value, found '=='")
        self.assertCompileError("()", 2, "expected a value, found ')'")
        self.assertCompileError("!", 2, "expected a value")

    def test_unbalanced(self):
        self.assertCompileError("(true", 6, "expected ')' to close '(' at column 1, found end of condition")
        self.assertCompileError("userId.indexOf('a'", 19, "expected ')' to close '(' at column 15")
        self.assertCompileError("userId.toLowerCase(", 20, "expected ')' to close '(' at column 19")
        self.assertCompileError("(true false)", 7, "expected ')' to close '(' at column 1, found 'false'")

    def test_other_javascript_syntax(self):
        for text, column, character in (
            ("1 + 1", 3, "+"),
            ("1 * 1", 3, "*"),
            ("true ? 1 : 2", 6, "?"),
            ("[1]", 1, "["),
            ("{}", 1, "{"),
            ("true // comment", 6, "/"),
            ("`x`", 1, "`"),
            ("true; false", 5, ";"),
            ("~1", 1, "~"),
            ("\x00", 1, "\x00"),
        ):
            self.assertCompileError(text, column, f"unexpected character {character!r}")

    def test_bad_arguments(self):
        self.assertRaises(TypeError, compile_condition, None)
        self.assertRaises(TypeError, compile_condition, b"true")
        self.assertRaises(ValueError, compile_condition, "true", max_length=0)
        self.assertRaises(ValueError, compile_condition, "true", max_depth=0)


class LimitTests(ConditionTestCase):
    def test_max_length(self):
        text = "true" + " " * 1020
        self.assertTrue(compile_condition(text).matches({}))
        self.assertCompileError(text + " ", 1025, "condition is 1025 characters long, the limit is 1024")
        self.assertCompileError("true", 4, "the limit is 3", max_length=3)
        self.assertTrue(compile_condition("true", max_length=4).matches({}))

    def test_max_depth_parentheses(self):
        deep = "(" * 32 + "true" + ")" * 32
        self.assertTrue(compile_condition(deep).matches({}))
        self.assertCompileError("(" + deep + ")", 33, "nested deeper than 32 levels")
        self.assertCompileError("((true))", 2, "nested deeper than 1 levels", max_depth=1)

    def test_max_depth_method_arguments(self):
        text = "userId.includes(userId.includes(userId.toLowerCase()) && 'a')"
        self.assertCompileError(text, 32, "nested deeper than 1 levels", max_depth=1)
        self.assertMatches(text, userId="a")
        self.assertTrue(compile_condition(text, max_depth=2).matches({"userId": "a"}))
        self.assertTrue(compile_condition("(userId.includes(('a')))", max_depth=3).matches({"userId": "a"}))
        self.assertCompileError("(userId.includes(('a')))", 18, "nested deeper than 2 levels", max_depth=2)

    def test_depth_beyond_the_stack_is_a_condition_error(self):
        text = "(" * 5000 + "true" + ")" * 5000
        with self.assertRaises(ConditionError) as caught:
            compile_condition(text, max_length=len(text), max_depth=10**6)
        self.assertIn("nested too deeply", str(caught.exception))

    def test_long_flat_expressions_do_not_recurse(self):
        """Operator, prefix and member chains are loops, not nesting."""
        size = 200_000
        chain = " || ".join(["false"] * 5000) + " || true"
        self.assertTrue(compile_condition(chain, max_length=size).matches({}))
        conjunction = " && ".join(["userId == 'a'"] * 5000)
        self.assertTrue(compile_condition(conjunction, max_length=size).matches({"userId": "a"}))
        comparisons = "1 " + "== 1 " * 5000
        self.assertFalse(compile_condition(comparisons, max_length=size).matches({}))
        self.assertTrue(compile_condition("!" * 5000 + "true", max_length=size).matches({}))
        self.assertTrue(compile_condition("-" * 5000 + "1 == 1", max_length=size).matches({}))
        members = "userId" + ".toLowerCase()" * 5000 + " == 'x'"
        self.assertTrue(compile_condition(members, max_length=size).matches({"userId": "X"}))


class SafetyTests(SynchronousTestCase):
    def test_no_dynamic_code_and_no_twisted(self):
        """The module neither runs Python from text nor imports Twisted."""
        tree = ast.parse(inspect.getsource(condition_module))
        forbidden = {"eval", "exec", "compile", "__import__", "getattr", "literal_eval"}
        for node in ast.walk(tree):
            if isinstance(node, ast.Call):
                function = node.func
                name = function.id if isinstance(function, ast.Name) else getattr(function, "attr", None)
                self.assertNotIn(name, forbidden, ast.dump(node))
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                modules = [alias.name for alias in node.names] + [getattr(node, "module", None) or ""]
                for module in modules:
                    self.assertFalse(module.startswith(("twisted", "ast", "importlib")), module)


VOCABULARY = [
    *sorted(VARIABLES), "true", "false", "null", "'a'", '"vip"', "''", "0", "1", "2.5", "-",
    "||", "&&", "!", "==", "!=", "===", "!==", "<", "<=", ">", ">=", "(", ")", ".", ",",
    "length", "indexOf", "includes", "startsWith", "endsWith", "toLowerCase", "toUpperCase",
    "(", ")", "constructor", "=", "+", "'", "\\", "foo",
]
variable_values = st.one_of(
    st.none(), st.text(max_size=8), st.sampled_from(["a", "vip", "A", "", "a,vip"]),
    st.integers(), st.floats(), st.binary(max_size=4), st.booleans(),
)
variable_maps = st.dictionaries(st.sampled_from(sorted(VARIABLES)), variable_values)
literal_text = st.text(
    st.characters(blacklist_categories=("Cs",), blacklist_characters="\u2028\u2029"), max_size=20
)

atoms = st.one_of(
    st.sampled_from(sorted(VARIABLES) + ["true", "false", "null", "0", "1", "2.5"]),
    literal_text.map(js_quote),
)


def _compound(inner):
    binary = st.sampled_from(["||", "&&", "==", "!=", "===", "!==", "<", "<=", ">", ">="])
    method = st.sampled_from(["indexOf", "includes", "startsWith", "endsWith"])
    return st.one_of(
        st.tuples(inner, binary, inner).map(" ".join),
        st.tuples(st.sampled_from(["!", "-"]), inner).map("".join),
        inner.map("({})".format),
        st.tuples(inner, method, inner).map(lambda parts: "({}).{}({})".format(*parts)),
        st.tuples(inner, st.sampled_from([".length", ".toLowerCase()", ".toUpperCase()"])).map(
            lambda parts: "({}){}".format(*parts)
        ),
    )


#: Conditions that are valid by construction (nesting stays well under 32).
expressions = st.recursive(atoms, _compound, max_leaves=12)


class PropertyTests(SynchronousTestCase):
    def check(self, text, variables):
        try:
            condition = compile_condition(text, max_length=200, max_depth=6)
        except ConditionError as error:
            self.assertGreaterEqual(error.column, 1)
            self.assertLessEqual(error.column, len(text) + 1)
            return
        self.assertIn(condition.matches(variables), (True, False))

    @given(st.text(max_size=60), variable_maps)
    @settings(max_examples=300)
    def test_arbitrary_text(self, text, variables):
        self.check(text, variables)

    @given(st.lists(st.sampled_from(VOCABULARY), max_size=25), st.sampled_from([" ", ""]), variable_maps)
    @settings(max_examples=800)
    def test_token_soup(self, words, separator, variables):
        self.check(separator.join(words), variables)

    @given(expressions, variable_maps)
    @settings(max_examples=500)
    def test_grammar_accepts_and_evaluates(self, text, variables):
        condition = compile_condition(text, max_length=10_000, max_depth=64)
        self.assertIn(condition.matches(variables), (True, False))

    @given(literal_text)
    def test_string_literals_round_trip(self, text):
        self.assertTrue(matches(f"userId == {js_quote(text)}", userId=text))
        self.assertTrue(matches(f"{js_quote(text)}.length == {utf16_units(text)}"))

    @given(literal_text, literal_text)
    def test_methods_agree_with_python(self, haystack, needle):
        variables = {"tags": haystack, "userId": needle}
        self.assertIs(compile_condition("tags.includes(userId)").matches(variables), needle in haystack)
        self.assertIs(compile_condition("tags.startsWith(userId)").matches(variables), haystack.startswith(needle))
        self.assertIs(compile_condition("tags.endsWith(userId)").matches(variables), haystack.endswith(needle))
        found = haystack.find(needle)
        expected = -1 if found < 0 else utf16_units(haystack[:found])
        self.assertTrue(compile_condition(f"tags.indexOf(userId) == {expected}").matches(variables))
