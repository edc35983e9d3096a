# codeloop/sandbox-java: the official Temurin JDK (the source launcher needs javac's
# module, so a JRE image will not do) plus Checkstyle's self-contained jar where the
# lint command looks for it, run as nobody.
# Build: scripts/build-sandbox-images.sh --official (context: workers/sandbox).
FROM eclipse-temurin:21-jdk
ARG CHECKSTYLE_VERSION=10.12.0
ADD https://github.com/checkstyle/checkstyle/releases/download/checkstyle-${CHECKSTYLE_VERSION}/checkstyle-${CHECKSTYLE_VERSION}-all.jar /usr/share/java/checkstyle.jar
RUN chmod 0644 /usr/share/java/checkstyle.jar
USER 65534:65534
WORKDIR /tmp
